//! Operating-system I/O shared by the engines: zero-copy transfers to a
//! descriptor.

mod transfer;

pub use transfer::{TransferChunk, TransferPlan};
