//! Which node serves a channel: the slot map.
//!
//! A sharded channel lives in the slot of its hash tag (CRC16, computed by
//! redis-rs's [`Slot::for_key`]), and only the master owning that slot
//! delivers its messages. A standalone Redis is one node owning every slot.
//! The map is read from `CLUSTER SLOTS`; this file only parses and answers,
//! so it is unit-tested without a server.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use redis::Value;
use redis::cluster_routing::Slot;

/// A node's name as the hub knows it: `host:port` (or the socket path of a
/// standalone Redis reached over a Unix socket).
pub(super) type NodeName = Arc<str>;

/// How many slots a Redis Cluster has.
const SLOT_COUNT: u16 = 16384;

/// A master named by the slot map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Master {
    pub(super) name: NodeName,
    /// Where a cluster's master is reached; `None` for a standalone Redis,
    /// reached as its seed says.
    pub(super) address: Option<(String, u16)>,
}

/// Which master owns which slot.
#[derive(Debug, Clone)]
pub(super) struct SlotMap {
    masters: Vec<Master>,
    /// Each covered slot's master (an index into `masters`); `None` for a
    /// standalone Redis, whose one node owns every slot.
    owners: Option<HashMap<Slot, usize>>,
}

/// `CLUSTER SLOTS` answered something that is not a slot map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadSlotMap(String);

impl fmt::Display for BadSlotMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CLUSTER SLOTS reply: {}", self.0)
    }
}

impl SlotMap {
    /// A standalone Redis: `node` owns every slot.
    pub(super) fn single(node: NodeName) -> Self {
        Self {
            masters: vec![Master {
                name: node,
                address: None,
            }],
            owners: None,
        }
    }

    /// Reads a `CLUSTER SLOTS` reply. `asked_host` stands in for a master
    /// whose endpoint the reply leaves empty or unknown (`?`): the node that
    /// answered names itself that way.
    pub(super) fn from_cluster_slots(reply: &Value, asked_host: &str) -> Result<Self, BadSlotMap> {
        let bad = |what: &str| BadSlotMap(what.to_owned());
        let Value::Array(ranges) = reply else {
            return Err(bad("not an array"));
        };
        let mut masters: Vec<Master> = Vec::new();
        let mut owners = HashMap::new();
        for range in ranges {
            let Value::Array(items) = range else {
                return Err(bad("a range is not an array"));
            };
            let (Some(start), Some(end), Some(Value::Array(master))) =
                (items.first(), items.get(1), items.get(2))
            else {
                return Err(bad("a range lacks its bounds or its master"));
            };
            let (start, end) = (slot_number(start)?, slot_number(end)?);
            let host = match master.first() {
                Some(value) => text(value).ok_or_else(|| bad("a master's host is not text"))?,
                None => return Err(bad("a master has no host")),
            };
            let host = if host.is_empty() || host == "?" {
                asked_host.to_owned()
            } else {
                host
            };
            let port = match master.get(1) {
                Some(Value::Int(port)) => {
                    u16::try_from(*port).map_err(|_| bad("a master's port is out of range"))?
                }
                _ => return Err(bad("a master's port is not an integer")),
            };
            let name: NodeName = Arc::from(endpoint(&host, port));
            let index = match masters.iter().position(|m| m.name == name) {
                Some(index) => index,
                None => {
                    masters.push(Master {
                        name,
                        address: Some((host, port)),
                    });
                    masters.len() - 1
                }
            };
            for number in start..=end {
                let slot = Slot::new(number).ok_or_else(|| bad("a slot is out of range"))?;
                owners.insert(slot, index);
            }
        }
        Ok(Self {
            masters,
            owners: Some(owners),
        })
    }

    /// The master that delivers `channel`'s messages; `None` when no master
    /// owns its slot (a cluster that is not fully covered).
    pub(super) fn owner(&self, channel: &str) -> Option<&NodeName> {
        let index = match &self.owners {
            None => 0,
            Some(owners) => *owners.get(&Slot::for_key(channel))?,
        };
        self.masters.get(index).map(|master| &master.name)
    }

    pub(super) fn masters(&self) -> &[Master] {
        &self.masters
    }

    /// Whether every slot has a master.
    pub(super) fn is_complete(&self) -> bool {
        self.owners
            .as_ref()
            .is_none_or(|owners| owners.len() == usize::from(SLOT_COUNT))
    }
}

/// `host:port`, with an IPv6 host in brackets.
pub(super) fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn slot_number(value: &Value) -> Result<u16, BadSlotMap> {
    match value {
        Value::Int(number) => u16::try_from(*number)
            .ok()
            .filter(|number| *number < SLOT_COUNT)
            .ok_or_else(|| BadSlotMap(format!("slot {number} is out of range"))),
        _ => Err(BadSlotMap("a slot bound is not an integer".to_owned())),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn range(start: i64, end: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![bulk(host), Value::Int(port), bulk("node-id")]),
            // A replica: not a master, never subscribed to.
            Value::Array(vec![bulk(host), Value::Int(port + 100), bulk("replica-id")]),
        ])
    }

    fn three_masters() -> SlotMap {
        let reply = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 7000),
            range(5461, 10922, "10.0.0.2", 7001),
            range(10923, 16383, "", 7002),
        ]);
        SlotMap::from_cluster_slots(&reply, "10.0.0.3").expect("a slot map")
    }

    #[test]
    fn a_channel_is_served_by_the_master_of_its_hash_tags_slot() {
        let map = three_masters();
        assert!(map.is_complete());
        // CLUSTER KEYSLOT foo = 12182, bar = 5061, hello = 866.
        assert_eq!(
            map.owner("jobgate:live:job:{foo}").map(|n| &**n),
            Some("10.0.0.3:7002")
        );
        assert_eq!(
            map.owner("jobgate:live:owner:{bar}").map(|n| &**n),
            Some("10.0.0.1:7000")
        );
        // Only the tag counts: the same tag, another channel, the same node.
        assert_eq!(map.owner("{foo}"), map.owner("jobgate:control:{foo}"));
        let names: Vec<&str> = map.masters().iter().map(|m| &*m.name).collect();
        assert_eq!(names, ["10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"]);
        assert_eq!(
            map.masters()[2].address,
            Some(("10.0.0.3".to_owned(), 7002)),
            "an empty host is the node that answered"
        );
    }

    #[test]
    fn a_master_owning_several_ranges_is_one_node() {
        let reply = Value::Array(vec![
            range(0, 100, "10.0.0.1", 7000),
            range(101, 16383, "10.0.0.2", 7001),
            range(16383, 16383, "10.0.0.1", 7000),
        ]);
        let map = SlotMap::from_cluster_slots(&reply, "x").expect("a slot map");
        assert_eq!(map.masters().len(), 2);
    }

    #[test]
    fn an_uncovered_slot_has_no_owner() {
        let reply = Value::Array(vec![range(0, 5460, "10.0.0.1", 7000)]);
        let map = SlotMap::from_cluster_slots(&reply, "x").expect("a slot map");
        assert!(!map.is_complete());
        assert_eq!(map.owner("{foo}"), None);
        assert!(map.owner("{bar}").is_some());
    }

    #[test]
    fn a_standalone_node_owns_every_channel() {
        let map = SlotMap::single(Arc::from("127.0.0.1:6379"));
        assert!(map.is_complete());
        for channel in ["{foo}", "{bar}", "no tag"] {
            assert_eq!(map.owner(channel).map(|n| &**n), Some("127.0.0.1:6379"));
        }
    }

    #[test]
    fn a_reply_that_is_not_a_slot_map_is_refused() {
        for reply in [
            Value::Nil,
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(5)])]),
            Value::Array(vec![range(0, 16384, "h", 1)]),
            Value::Array(vec![range(0, 1, "h", 70000)]),
        ] {
            assert!(
                SlotMap::from_cluster_slots(&reply, "x").is_err(),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn an_ipv6_endpoint_is_bracketed() {
        assert_eq!(endpoint("::1", 7000), "[::1]:7000");
        assert_eq!(endpoint("redis-0", 7000), "redis-0:7000");
    }
}
