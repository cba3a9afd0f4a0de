//! [`SharedWatchResponse`]: the daemon's form of `WatchResponse`, wire-identical to
//! [`crate::v1::WatchResponse`], whose snapshot is encoded once and shared (a reference
//! count, no copy) by every watcher that asked for the same thing; only `skipped` is per
//! watcher. The servers in [`crate::v1_shared_server`] stream it.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::v1;

/// A `WatchResponse` with its snapshot already encoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedWatchResponse {
    /// Field 1 as it goes on the wire: key, length and the encoded `Snapshot`.
    snapshot_field: Bytes,
    /// Field 2, `skipped`.
    skipped: u64,
}

impl SharedWatchResponse {
    /// `snapshot` encoded as a WatchResponse's field 1, to share between watchers.
    pub fn encode_snapshot(snapshot: &v1::Snapshot) -> Bytes {
        let mut field = Vec::with_capacity(
            encoding::key_len(1)
                + encoding::encoded_len_varint(snapshot.encoded_len() as u64)
                + snapshot.encoded_len(),
        );
        encoding::message::encode(1, snapshot, &mut field);
        Bytes::from(field)
    }

    /// A message of the shared `snapshot_field` (from [`Self::encode_snapshot`]) and this
    /// watcher's `skipped`.
    pub fn new(snapshot_field: Bytes, skipped: u64) -> Self {
        Self {
            snapshot_field,
            skipped,
        }
    }
}

impl Message for SharedWatchResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.snapshot_field);
        if self.skipped != 0 {
            encoding::uint64::encode(2, &self.skipped, buf);
        }
    }

    /// Only ever sent: a client decodes it as `v1::WatchResponse`. Decoding one keeps
    /// nothing.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.snapshot_field.len()
            + if self.skipped != 0 {
                encoding::uint64::encoded_len(2, &self.skipped)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> v1::Snapshot {
        v1::Snapshot {
            host: "node-1".into(),
            sequence: 76,
            gpus: vec![v1::Gpu {
                index: 3,
                name: Some("NVIDIA A100-SXM4-80GB".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn decodes_as_the_contracts_watch_response() {
        let field = SharedWatchResponse::encode_snapshot(&snapshot());
        for skipped in [0, 1, 300] {
            let shared = SharedWatchResponse::new(field.clone(), skipped);
            let bytes = shared.encode_to_vec();
            assert_eq!(bytes.len(), shared.encoded_len());
            let expected = v1::WatchResponse {
                snapshot: Some(snapshot()),
                skipped,
            };
            assert_eq!(bytes, expected.encode_to_vec(), "byte for byte");
            assert_eq!(
                v1::WatchResponse::decode(bytes.as_slice()).unwrap(),
                expected
            );
        }
    }
}
