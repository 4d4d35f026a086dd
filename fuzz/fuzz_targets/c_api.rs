//! Sequences of C API calls, as a careless or hostile caller makes them:
//! every handle may be used after close or free, freed twice, or be NULL;
//! names and buffers come from the input. Each call must return a status,
//! never crash.
#![no_main]

use std::ffi::CString;
use std::ptr;

use libfuzzer_sys::fuzz_target;
use mqstore::ffi::*;

struct Session {
    dir: tempfile::TempDir,
    stores: Vec<*mut mqs_store>,
    batches: Vec<*mut mqs_batch>,
    transfers: Vec<*mut mqs_transfer>,
}

const SHARDS: [&std::ffi::CStr; 3] = [c"a", c"b", c"no such shard"];

fn pick<T: Copy>(items: &[T], byte: u8, null: T) -> T {
    if items.is_empty() || byte == 0xff {
        null
    } else {
        items[byte as usize % items.len()]
    }
}

impl Session {
    /// One call chosen by `op`, with arguments from `arg` and `bytes`.
    ///
    /// SAFETY (of the calls below): every pointer passed is NULL, a handle
    /// this session received (possibly closed or freed already, which the
    /// API must detect), or points into live local buffers of the stated
    /// length.
    unsafe fn step(&mut self, op: u8, arg: u8, bytes: &[u8]) {
        let store = pick(&self.stores, arg, ptr::null_mut());
        let shard = SHARDS[arg as usize % SHARDS.len()].as_ptr();
        let mut offset = 0i64;
        match op % 12 {
            0 => {
                let path = CString::new(self.dir.path().join("s").to_str().unwrap()).unwrap();
                let config =
                    CString::new(String::from_utf8_lossy(bytes).replace('\0', "")).unwrap();
                let config = if arg % 2 == 0 {
                    ptr::null()
                } else {
                    config.as_ptr()
                };
                let mut out = ptr::null_mut();
                if unsafe { mqs_store_open(path.as_ptr(), config, &mut out) } == mqs_status::MQS_OK
                {
                    self.stores.push(out);
                }
            }
            1 => {
                let _ = mqs_store_close(store);
            }
            2 => {
                let _ = unsafe { mqs_shard_create(store, shard, ptr::null()) };
            }
            3 => {
                let record = mqs_record_in {
                    key: mqs_slice {
                        data: bytes.as_ptr(),
                        len: bytes.len().min(arg as usize),
                    },
                    value: if arg % 3 == 0 {
                        mqs_slice {
                            data: ptr::null(),
                            len: 0,
                        }
                    } else {
                        mqs_slice {
                            data: bytes.as_ptr(),
                            len: bytes.len(),
                        }
                    },
                    headers: ptr::null(),
                    header_count: 0,
                    tags: ptr::null(),
                    tag_count: 0,
                    timestamp_ms: arg as i64,
                    expire_at_ms: 0,
                    value_is_null: arg % 3 == 0,
                };
                let _ = unsafe { mqs_append_batch(store, shard, &record, 1, &mut offset) };
            }
            4 => {
                let mut count = 0usize;
                let _ = unsafe {
                    mqs_append_raw(
                        store,
                        shard,
                        bytes.as_ptr(),
                        bytes.len(),
                        &mut offset,
                        &mut count,
                    )
                };
            }
            5 => {
                let mut batch = ptr::null_mut();
                let from = i64::from(arg) - 8;
                if unsafe { mqs_read(store, shard, from, 100, 1 << 20, &mut batch) }
                    == mqs_status::MQS_OK
                {
                    self.batches.push(batch);
                }
            }
            6 => {
                let batch = pick(&self.batches, arg, ptr::null_mut());
                let mut records = ptr::null();
                let mut count = 0usize;
                let _ = unsafe { mqs_batch_records(batch, &mut records, &mut count) };
                let _ = mqs_batch_free(batch);
            }
            7 => {
                let mut transfer = ptr::null_mut();
                let from = i64::from(arg % 16);
                if unsafe { mqs_transfer_plan(store, shard, from, 1 << 16, &mut transfer) }
                    == mqs_status::MQS_OK
                {
                    self.transfers.push(transfer);
                }
            }
            8 => {
                let transfer = pick(&self.transfers, arg, ptr::null_mut());
                let mut buf = [0u8; 64];
                let (mut written, mut complete) = (0usize, false);
                let len = (arg as usize) % (buf.len() + 1);
                let _ = unsafe {
                    mqs_transfer_read_into(
                        transfer,
                        buf.as_mut_ptr(),
                        len,
                        &mut written,
                        &mut complete,
                    )
                };
            }
            9 => {
                let transfer = pick(&self.transfers, arg, ptr::null_mut());
                let _ = mqs_transfer_free(transfer);
            }
            10 => {
                let _ = unsafe {
                    mqs_delete_records_before(store, shard, i64::from(arg) - 4, &mut offset)
                };
            }
            _ => {
                let _ = unsafe { mqs_wait_durable(store, shard, i64::from(arg) - 4) };
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut session = Session {
        dir: tempfile::tempdir().unwrap(),
        stores: Vec::new(),
        batches: Vec::new(),
        transfers: Vec::new(),
    };
    for step in data.chunks(8) {
        if step.len() < 2 {
            break;
        }
        // SAFETY: see `Session::step`.
        unsafe { session.step(step[0], step[1], &step[2..]) };
    }
    // Everything still open is released once (a second release was part of
    // the sequence, if anything).
    for store in session.stores.drain(..) {
        let _ = mqs_store_close(store);
    }
});
