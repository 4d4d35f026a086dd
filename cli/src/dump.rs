//! `mqstore dump`: the batches and records of a shard as stored, like
//! Kafka's kafka-dump-log: each batch's header fields and whether its CRC
//! holds, then its records.

use bytes::Bytes;
use mqstore::format::{self, BatchHeader};
use mqstore::{RecordView, Store};

use crate::{config, open_store, Args, CliResult, Failure};

/// Bytes fetched per transfer plan while walking a shard.
const CHUNK_BYTES: usize = 8 << 20;

/// Calls `visit` with the bytes of every stored batch of `shard` from the
/// one holding `from` on, exactly as a transfer would send them (deleted
/// records are absent from rewritten batches; expired ones are still
/// there). `visit` returns false to stop. A stream that does not split
/// into whole batches is an error naming the byte.
pub fn for_each_batch(
    store: &Store,
    shard: &str,
    from: i64,
    mut visit: impl FnMut(Bytes) -> CliResult<bool>,
) -> CliResult<()> {
    let next = store.shard_info(shard)?.next_offset;
    let mut offset = from;
    while offset < next {
        let mut plan = store.plan_transfer(shard, offset, CHUNK_BYTES)?;
        let total = plan.total_bytes() as usize;
        if total == 0 {
            break;
        }
        let mut buf = vec![0u8; total];
        let mut filled = 0;
        while filled < total {
            let n = plan.read_into(&mut buf[filled..])?;
            if n == 0 {
                return Err(Failure::Failed(format!(
                    "shard '{shard}': the transfer from offset {offset} ended after {filled} of {total} bytes"
                )));
            }
            filled += n;
        }
        let batches = format::split_batches(&Bytes::from(buf)).map_err(|e| {
            Failure::Failed(format!(
                "shard '{shard}': the batches from offset {offset} do not parse: {e}"
            ))
        })?;
        for batch in batches {
            if !visit(batch)? {
                return Ok(());
            }
        }
        if plan.next_offset() <= offset {
            break;
        }
        offset = plan.next_offset();
    }
    Ok(())
}

fn codec(header: &BatchHeader) -> String {
    header
        .compression()
        .map(|c| c.name().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn record_json(record: &RecordView, values: bool) -> serde_json::Value {
    let mut out = serde_json::json!({
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "key_size": record.key.as_ref().map_or(-1, |k| k.len() as i64),
        // -1 for a null value (a tombstone), as for a null key.
        "value_size": record.value.as_ref().map_or(-1, |v| v.len() as i64),
        "header_keys": record.headers.iter().map(|h| text(&h.key)).collect::<Vec<_>>(),
        "tags": record.tags.iter().map(|t| text(t)).collect::<Vec<_>>(),
    });
    if let Some(expire) = record.expire_at_ms {
        out["expire_at"] = expire.into();
    }
    if values {
        out["key"] = record.key.as_ref().map(|k| text(k)).into();
        out["value"] = record.value.as_ref().map(|v| text(v)).into();
    }
    out
}

pub fn run(raw: &[String]) -> CliResult<()> {
    let args = Args::parse(
        raw,
        &["json", "values", "wait"],
        &["from", "max-records", "config"],
    )?;
    args.exactly(&["DIR", "SHARD"])?;
    let shard = args.positional[1].clone();
    let max_records = args.number("max-records")?.unwrap_or(i64::MAX);
    let json = args.flag("json");
    let values = args.flag("values");
    let from = args.number("from")?;
    let store = open_store(
        std::path::Path::new(&args.positional[0]),
        config(&args, |_| ())?,
        args.flag("wait"),
    )?;
    let info = store.shard_info(&shard)?;
    let from = from.unwrap_or(info.first_offset);
    if !json {
        println!(
            "Dumping shard {shard} ({} engine, offsets {}..{}, {} records, {} bytes)",
            info.engine.name(),
            info.first_offset,
            info.next_offset,
            info.records,
            info.bytes
        );
    }
    let mut printed = 0i64;
    let mut invalid = 0u64;
    let mut position = 0u64;
    for_each_batch(&store, &shard, from, |batch| {
        let header = BatchHeader::parse(&batch)?;
        let crc_ok = format::verify_crc(&batch).is_ok();
        if !crc_ok {
            invalid += 1;
        }
        let records = if crc_ok {
            format::decode_batch(&batch, false)?
        } else {
            Vec::new()
        };
        let shown: Vec<&RecordView> = records
            .iter()
            .filter(|r| r.offset >= from)
            .take((max_records - printed).max(0) as usize)
            .collect();
        if json {
            let line = serde_json::json!({
                "base_offset": header.base_offset,
                "last_offset": header.last_offset(),
                "count": header.record_count,
                "position": position,
                "size": batch.len(),
                "base_timestamp": header.base_timestamp,
                "max_timestamp": header.max_timestamp,
                "magic": header.magic,
                "compression": codec(&header),
                "transactional": header.is_transactional(),
                "control": header.is_control(),
                "producer_id": header.producer_id,
                "crc": header.crc,
                "crc_valid": crc_ok,
                "records": shown.iter().map(|r| record_json(r, values)).collect::<Vec<_>>(),
            });
            println!("{line}");
        } else {
            println!(
                "baseOffset: {} lastOffset: {} count: {} baseTimestamp: {} maxTimestamp: {} \
                 position: {position} size: {} magic: {} compresscodec: {} producerId: {} \
                 isTransactional: {} isControl: {} crc: {} isValid: {crc_ok}",
                header.base_offset,
                header.last_offset(),
                header.record_count,
                header.base_timestamp,
                header.max_timestamp,
                batch.len(),
                header.magic,
                codec(&header),
                header.producer_id,
                header.is_transactional(),
                header.is_control(),
                header.crc,
            );
            for r in &shown {
                let mut line = format!(
                    "| offset: {} CreateTime: {} keySize: {} valueSize: {} headerKeys: [{}]",
                    r.offset,
                    r.timestamp_ms,
                    r.key.as_ref().map_or(-1, |k| k.len() as i64),
                    r.value.as_ref().map_or(-1, |v| v.len() as i64),
                    r.headers
                        .iter()
                        .map(|h| text(&h.key))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                if !r.tags.is_empty() {
                    let tags: Vec<String> = r.tags.iter().map(|t| text(t)).collect();
                    line.push_str(&format!(" tags: [{}]", tags.join(",")));
                }
                if values {
                    if let Some(key) = &r.key {
                        line.push_str(&format!(" key: {}", text(key)));
                    }
                    match &r.value {
                        Some(value) => line.push_str(&format!(" payload: {}", text(value))),
                        None => line.push_str(" payload: null"),
                    }
                }
                println!("{line}");
            }
        }
        position += batch.len() as u64;
        printed += shown.len() as i64;
        Ok(printed < max_records)
    })?;
    store.close()?;
    if invalid > 0 {
        return Err(Failure::Failed(format!(
            "{invalid} batch(es) of shard '{shard}' fail their CRC (isValid: false above)"
        )));
    }
    Ok(())
}
