//! A shard's manifest: its catalogue entry, the objects holding its
//! batches, the offset below which everything is gone and its consumer
//! group offsets. It is the shard's only mutable object; every change is a
//! conditional PUT on the ETag read or written last, so two writers can
//! never both win, and an object is part of the shard only once the
//! manifest that lists it is stored.
//!
//! ```text
//! "MQSMAN01", generation u64, start i64, next_seq u64,
//! catalogue entry (u32 length, ShardMeta's binary form),
//! objects: u32 count, then seq u64, first_base i64, end i64, data_len u64,
//!          count u32, footer_len u64
//! groups: u32 count, then name (u32 length, UTF-8), offset i64
//! crc32c u32 of everything before it
//! ```
//! `generation` grows by one with every write: after a write whose answer
//! was lost, reading the manifest back tells whether it was applied.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use crate::engine::database::ShardMeta;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"MQSMAN01";

/// An object listed by a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// Names the object (`Layout::object`); never reused in a shard.
    pub seq: u64,
    pub first_base: i64,
    /// One past its last batch's last offset.
    pub end: i64,
    /// Its batch bytes; the footer follows them.
    pub data_len: u64,
    pub count: u32,
    pub footer_len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub generation: u64,
    pub meta: ShardMeta,
    /// Every batch below it is gone (retention, `delete_records_before`),
    /// also where an object listed still holds it.
    pub start: i64,
    pub next_seq: u64,
    pub objects: Vec<ObjectRef>,
    pub groups: BTreeMap<String, i64>,
}

impl Manifest {
    pub fn new(meta: ShardMeta) -> Manifest {
        Manifest {
            generation: 0,
            meta,
            start: i64::MIN,
            next_seq: 1,
            objects: Vec::new(),
            groups: BTreeMap::new(),
        }
    }

    pub fn encode(&self) -> Bytes {
        let meta = self.meta.encode();
        let mut out = BytesMut::with_capacity(64 + meta.len() + self.objects.len() * 44);
        out.put_slice(MAGIC);
        out.put_u64(self.generation);
        out.put_i64(self.start);
        out.put_u64(self.next_seq);
        out.put_u32(meta.len() as u32);
        out.put_slice(&meta);
        out.put_u32(self.objects.len() as u32);
        for object in &self.objects {
            out.put_u64(object.seq);
            out.put_i64(object.first_base);
            out.put_i64(object.end);
            out.put_u64(object.data_len);
            out.put_u32(object.count);
            out.put_u64(object.footer_len);
        }
        out.put_u32(self.groups.len() as u32);
        for (name, offset) in &self.groups {
            out.put_u32(name.len() as u32);
            out.put_slice(name.as_bytes());
            out.put_i64(*offset);
        }
        let crc = crc32c::crc32c(&out);
        out.put_u32(crc);
        out.freeze()
    }

    pub fn decode(shard: u64, bytes: &[u8]) -> Result<Manifest> {
        let bad =
            |what: &str| Error::corruption(format!("S3 manifest of shard id {shard}: {what}"));
        if bytes.len() < MAGIC.len() + 4 || &bytes[..8] != MAGIC {
            return Err(bad("not a manifest (no marker)"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad("fails its checksum"));
        }
        let mut reader = Reader {
            rest: &body[8..],
            bad: &bad,
        };
        let generation = reader.u64()?;
        let start = reader.u64()? as i64;
        let next_seq = reader.u64()?;
        let meta_len = reader.u32()? as usize;
        let meta = ShardMeta::decode(shard, reader.take(meta_len)?)?;
        let mut objects = Vec::new();
        for _ in 0..reader.u32()? {
            objects.push(ObjectRef {
                seq: reader.u64()?,
                first_base: reader.u64()? as i64,
                end: reader.u64()? as i64,
                data_len: reader.u64()?,
                count: reader.u32()?,
                footer_len: reader.u64()?,
            });
        }
        let mut groups = BTreeMap::new();
        for _ in 0..reader.u32()? {
            let len = reader.u32()? as usize;
            let name = String::from_utf8(reader.take(len)?.to_vec())
                .map_err(|_| bad("a group name is not UTF-8"))?;
            groups.insert(name, reader.u64()? as i64);
        }
        if !reader.rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Manifest {
            generation,
            meta,
            start,
            next_seq,
            objects,
            groups,
        })
    }
}

struct Reader<'a, F: Fn(&str) -> Error> {
    rest: &'a [u8],
    bad: &'a F,
}

impl<'a, F: Fn(&str) -> Error> Reader<'a, F> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err((self.bad)("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}
