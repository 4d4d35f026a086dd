//! Arbitrary bytes as a producer's request: validation never panics, and
//! every batch it accepts decodes in full (what append_raw stores reads back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqstore::format::{self, validate};

fuzz_target!(|data: &[u8]| {
    let limits = validate::Limits {
        max_batch_bytes: 1 << 20,
        max_record_bytes: 1 << 16,
    };
    if let Ok(batches) = validate::validate_producer_batches(data, limits) {
        for batch in batches {
            let records =
                format::decode_batch(&batch.bytes, true).expect("accepted batches decode");
            assert_eq!(records.len() as i32, batch.header.record_count);
        }
    }
});
