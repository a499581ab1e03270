#!/usr/bin/env bash
# The token workflow end to end, with no authority: a root key, a token for alice, an
# attenuated token she hands to a CI deployer, and the verifier's decisions.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p ringzero-cli
# Wherever cargo puts its target directory (CARGO_TARGET_DIR is honoured).
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
rz="$target_dir/release/ringzero"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

step() { printf '\n$ %s\n' "$*"; }

step "ringzero keygen --out $dir/root.key"
"$rz" keygen --out "$dir/root.key"

step "ringzero token mint ... (alice: logs:read + debug:attach on ns/default, 1h)"
alice=$("$rz" token mint --root-key "$dir/root.key" --subject spiffe://example.org/user/alice \
  --operation logs:read --operation debug:attach --resource ns/default --ttl 1h)
echo "$alice" > "$dir/alice.token"
echo "${alice:0:48}…"

step "ringzero token attenuate @alice.token --operation logs:read --resource ns/default/web --ttl 10m --bind-peer spiffe://example.org/ns/ci/deployer"
ci=$("$rz" token attenuate "@$dir/alice.token" --operation logs:read --resource ns/default/web \
  --ttl 10m --bind-peer spiffe://example.org/ns/ci/deployer)

step "ringzero token inspect <ci token>"
"$rz" token inspect "$ci"

verify() {
  step "ringzero token verify <ci token> $*"
  "$rz" token verify "$ci" --root-key "$dir/root.key.pub" "$@" && echo "(exit 0)" || echo "(exit $?)"
}
verify --operation logs:read --resource ns/default/web/frontend --peer spiffe://example.org/ns/ci/deployer
verify --operation logs:read --resource ns/default/webhook --peer spiffe://example.org/ns/ci/deployer
verify --operation debug:attach --resource ns/default/web --peer spiffe://example.org/ns/ci/deployer
verify --operation logs:read --resource ns/default/web --peer spiffe://example.org/user/mallory
