//! [`LeanCodec`]: protobuf over gRPC like `tonic_prost::ProstCodec`, with buffers sized for
//! servers that hold many long-lived streams.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// How many bytes a stream's encode (or decode) buffer starts with; it grows to the largest
/// message it carried. tonic's default is 8 KiB per stream, held for the stream's life: on an
/// agent serving thousands of `FetchX509SVID` streams whose messages are 2–3 KiB, that was
/// about half of what each open stream cost (`cargo bench -p ringzero-agent --bench workload`).
const INITIAL: usize = 0;
/// As tonic: a buffer past this is sent at once rather than filled further.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The codec of the Workload API (`build.rs` names it): prost encoding, lean buffers.
#[derive(Debug, Clone)]
pub(crate) struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
