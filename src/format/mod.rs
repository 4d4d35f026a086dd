//! The on-disk and on-wire format: Apache Kafka RecordBatch v2 (magic 2),
//! byte for byte, so stored segments can be served to Kafka clients and
//! Kafka-produced batches can be stored as they arrive.

pub mod batch;
pub mod compression;
mod snappy;
pub mod validate;
pub mod varint;

pub use batch::{
    decode_batch, empty_batch, encode_batch, encoded_record_len, for_each_record,
    for_each_record_from, retain_records, set_base_offset, set_log_append_time,
    set_partition_leader_epoch, split_batches, verify_crc, BatchHeader, EncodedBatch,
    ATTRIBUTES_OFFSET, BASE_OFFSET_OFFSET, BASE_SEQUENCE_OFFSET, BASE_TIMESTAMP_OFFSET,
    BATCH_HEADER_LEN, BATCH_LENGTH_OFFSET, CONTROL_MASK, CRC_OFFSET, LAST_OFFSET_DELTA_OFFSET,
    LOG_OVERHEAD, MAGIC_OFFSET, MAGIC_V2, MAX_BATCH_LEN, MAX_RECORDS_LEN, MAX_TIMESTAMP_OFFSET,
    MIN_BATCH_LENGTH, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
    PARTITION_LEADER_EPOCH_OFFSET, PRODUCER_EPOCH_OFFSET, PRODUCER_ID_OFFSET, RECORDS_OFFSET,
    RECORD_COUNT_OFFSET, TIMESTAMP_TYPE_MASK, TRANSACTIONAL_MASK,
};
pub use compression::{Compression, ALL_CODECS};
