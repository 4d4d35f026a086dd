//! Operating-system I/O shared by the engines: zero-copy transfers to a
//! descriptor, directory fsync, views of mapped files.

mod fs;
mod transfer;

pub use fs::{create_new, map_slice, sync_dir};

pub use transfer::{TransferChunk, TransferPlan};
