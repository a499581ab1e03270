//! The versioned wire form: one version byte, then the postcard encoding of the body (see the
//! [module docs](super)).

use serde::{Deserialize, Serialize};

use super::{
    AuditRecord, BATCH_VERSION, Batch, COMMAND_VERSION, Command, CommandId, Invalid, MAX_BATCH, Op,
    invalid,
};

impl Batch {
    /// The versioned wire form (a copy of the one made when the batch was).
    pub fn encode(&self) -> Vec<u8> {
        self.wire().to_vec()
    }

    /// Decodes a batch (or a version-1 single command), refusing unknown versions, oversized
    /// batches and trailing bytes. The bytes are kept as the batch's wire form.
    pub fn decode(bytes: &[u8]) -> Result<Self, Invalid> {
        Self::from_wire(bytes.to_vec())
    }

    fn from_wire(wire: Vec<u8>) -> Result<Self, Invalid> {
        let commands = match wire.split_first() {
            Some((&COMMAND_VERSION, _)) => vec![Command::from_wire(&wire)?],
            Some((&BATCH_VERSION, body)) => {
                let (cmds, rest): (Vec<CommandV1>, &[u8]) = postcard::take_from_bytes(body)
                    .map_err(|err| invalid(format!("decode: {err}")))?;
                if !rest.is_empty() {
                    return Err(invalid("trailing bytes after batch"));
                }
                if cmds.len() > MAX_BATCH {
                    return Err(invalid("batch too large"));
                }
                cmds.into_iter().map(Command::from).collect()
            }
            Some((v, _)) => return Err(invalid(format!("unknown entry version {v}"))),
            None => return Err(invalid("empty entry")),
        };
        Ok(Batch(std::sync::Arc::new(super::Encoded {
            commands,
            wire,
        })))
    }
}

/// Version byte 2 and the postcard encoding of `commands`.
pub(super) fn encode_batch(commands: &[Command]) -> Vec<u8> {
    let body: Vec<CommandV1Ref<'_>> = commands.iter().map(CommandV1Ref::from).collect();
    let mut out = vec![BATCH_VERSION];
    // As for a single command: an encoding failure leaves a batch that decodes as invalid.
    if let Ok(bytes) = postcard::to_stdvec(&body) {
        out.extend_from_slice(&bytes);
    }
    out
}

impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes_compat::serialize(self.wire(), s)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = serde_bytes_compat::deserialize(d)?;
        Batch::from_wire(wire).map_err(serde::de::Error::custom)
    }
}

impl Command {
    /// Encodes the command (version byte + postcard).
    pub fn encode(&self) -> Vec<u8> {
        Envelope::from(self.clone()).0
    }

    /// Decodes a command, refusing unknown versions and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Invalid> {
        Self::try_from(Envelope(bytes.to_vec()))
    }
}

/// The versioned wire form of a command.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct Envelope(#[serde(with = "serde_bytes_compat")] Vec<u8>);

#[derive(Serialize, Deserialize)]
struct CommandV1 {
    id: CommandId,
    time_ms: u64,
    audit: AuditRecord,
    op: Op,
}

/// [`CommandV1`] borrowed, to encode without cloning.
#[derive(Serialize)]
struct CommandV1Ref<'a> {
    id: &'a CommandId,
    time_ms: u64,
    audit: &'a AuditRecord,
    op: &'a Op,
}

impl<'a> From<&'a Command> for CommandV1Ref<'a> {
    fn from(c: &'a Command) -> Self {
        CommandV1Ref {
            id: &c.id,
            time_ms: c.time_ms,
            audit: &c.audit,
            op: &c.op,
        }
    }
}

impl From<Command> for CommandV1 {
    fn from(c: Command) -> Self {
        CommandV1 {
            id: c.id,
            time_ms: c.time_ms,
            audit: c.audit,
            op: c.op,
        }
    }
}

impl From<CommandV1> for Command {
    fn from(v1: CommandV1) -> Self {
        Command {
            id: v1.id,
            time_ms: v1.time_ms,
            audit: v1.audit,
            op: v1.op,
        }
    }
}

impl From<Command> for Envelope {
    fn from(c: Command) -> Self {
        let body = CommandV1::from(c);
        let mut out = vec![COMMAND_VERSION];
        // Encoding into a Vec cannot fail for these types (no maps with non-string keys, no
        // unsized sequences); an error would leave only the version byte, which decodes as an
        // invalid command rather than a different one.
        if let Ok(bytes) = postcard::to_stdvec(&body) {
            out.extend_from_slice(&bytes);
        }
        Envelope(out)
    }
}

impl TryFrom<Envelope> for Command {
    type Error = Invalid;
    fn try_from(e: Envelope) -> Result<Self, Invalid> {
        Command::from_wire(&e.0)
    }
}

impl Command {
    fn from_wire(wire: &[u8]) -> Result<Self, Invalid> {
        match wire.split_first() {
            Some((&COMMAND_VERSION, body)) => {
                let (v1, rest): (CommandV1, &[u8]) = postcard::take_from_bytes(body)
                    .map_err(|err| invalid(format!("decode: {err}")))?;
                if !rest.is_empty() {
                    return Err(invalid("trailing bytes after command"));
                }
                Ok(Command::from(v1))
            }
            Some((v, _)) => Err(invalid(format!("unknown command version {v}"))),
            None => Err(invalid("empty command")),
        }
    }
}

/// Serializes a byte vector as a byte string (compact in postcard, readable in JSON).
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}
