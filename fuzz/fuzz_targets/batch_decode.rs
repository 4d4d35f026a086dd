//! Arbitrary bytes through every batch reader: splitting, decoding with and
//! without the CRC check, and the compaction rewrite. Any outcome but a
//! panic is fine; a rewrite that succeeds must decode.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqstore::format;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let _ = format::split_batches(&bytes);
    let _ = format::decode_batch(&bytes, false);
    if format::decode_batch(&bytes, true).is_ok() {
        let mut n = 0u32;
        if let Ok(Some(kept)) = format::retain_records(&bytes, |_| {
            n += 1;
            n % 2 == 0
        }) {
            format::decode_batch(&kept, true).expect("a rewritten batch decodes");
        }
    }
});
