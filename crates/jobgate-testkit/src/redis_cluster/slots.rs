//! Reading what nodes say: `CLUSTER SLOTS` ranges and `INFO`-style fields.

use std::time::Duration;

/// What `CLUSTER SLOTS` says about one slot range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SlotRange {
    pub(super) first: u16,
    pub(super) last: u16,
    pub(super) master_port: u16,
}

/// A field of `CLUSTER INFO` from `client`'s node; `None` if it does not
/// answer.
pub(super) fn cluster_info_field(client: &redis::Client, field: &str) -> Option<String> {
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()?;
    info_field(&info, field).map(str::to_owned)
}

pub(super) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// The ranges of a `CLUSTER SLOTS` reply: `[[first, last, [host, port,
/// id, ...], replicas...], ...]`.
pub(super) fn parse_slot_ranges(reply: &redis::Value) -> Vec<SlotRange> {
    let redis::Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|range| {
            let redis::Value::Array(fields) = range else {
                return None;
            };
            let first = as_int(fields.first()?)?;
            let last = as_int(fields.get(1)?)?;
            let redis::Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let master_port = as_int(master.get(1)?)?;
            Some(SlotRange {
                first: u16::try_from(first).ok()?,
                last: u16::try_from(last).ok()?,
                master_port: u16::try_from(master_port).ok()?,
            })
        })
        .collect()
}

fn as_int(value: &redis::Value) -> Option<i64> {
    match value {
        redis::Value::Int(number) => Some(*number),
        _ => None,
    }
}
