//! Operating-system I/O shared by the engines: zero-copy transfers to a
//! descriptor, durable directory creation and fsync, views of mapped files.

pub mod fs;
mod observe;
mod transfer;

#[cfg(test)]
pub use fs::take_synced_dirs;
pub use fs::{
    create_dir_all_durable, create_new, map_slice, remove_file_durably, replace_file_durably,
    sync_dir,
};

pub use observe::{set_fs_observer, FsObserver};
pub use transfer::{ChunkFetcher, SendProgress, TransferChunk, TransferPlan, LAZY_PIECE_MAX};
