//! The ng commands in one table: dispatch, the metrics' command labels,
//! whether a command changes a call (the cluster journal), the refusals and
//! their reasons, and the docs test all read it.

/// How the engine answers a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `pong`.
    Ping,
    /// An offer: allocates (or re-offers) the call's sessions.
    Offer,
    /// An answer: sets the answerer's side.
    Answer,
    /// Ends the call.
    Delete,
    /// One call's statistics.
    Query,
    /// Call ids.
    List,
    /// The relay's statistics.
    Statistics,
    /// Drops what a party sends.
    BlockMedia,
    /// Forwards it again.
    UnblockMedia,
    /// Refused, with why (the privacy promise: nothing decrypted, stored or
    /// copied).
    Refused(&'static str),
}

/// One ng command.
#[derive(Debug, Clone, Copy)]
pub struct Command {
    /// Its name on the wire.
    pub name: &'static str,
    /// What answers it.
    pub handler: Handler,
    /// Whether it changes a call (replicated with redundancy on).
    pub mutating: bool,
}

const RECORDS: &str = "UCMRC never records, stores or copies media";
const GENERATES: &str = "UCMRC relays media without decrypting or generating it";
const INSPECTS: &str = "UCMRC does not inspect media payloads (block media works)";
const SUBSCRIBES: &str = "UCMRC relays each call between its two parties only (no media subscriptions)";

const fn handled(name: &'static str, handler: Handler, mutating: bool) -> Command {
    Command { name, handler, mutating }
}

const fn refused(name: &'static str, why: &'static str) -> Command {
    Command { name, handler: Handler::Refused(why), mutating: false }
}

/// Every command UCMRC knows: the ones it answers first ([`HANDLED`] of
/// them), then the ones it refuses.
pub const TABLE: [Command; 25] = [
    handled("ping", Handler::Ping, false),
    handled("offer", Handler::Offer, true),
    handled("answer", Handler::Answer, true),
    handled("delete", Handler::Delete, true),
    handled("query", Handler::Query, false),
    handled("list", Handler::List, false),
    handled("statistics", Handler::Statistics, false),
    handled("block media", Handler::BlockMedia, true),
    handled("unblock media", Handler::UnblockMedia, true),
    refused("start recording", RECORDS),
    refused("stop recording", RECORDS),
    refused("pause recording", RECORDS),
    refused("start forwarding", RECORDS),
    refused("stop forwarding", RECORDS),
    refused("silence media", GENERATES),
    refused("unsilence media", GENERATES),
    refused("play media", GENERATES),
    refused("stop media", GENERATES),
    refused("play DTMF", GENERATES),
    refused("block DTMF", INSPECTS),
    refused("unblock DTMF", INSPECTS),
    refused("subscribe request", SUBSCRIBES),
    refused("subscribe answer", SUBSCRIBES),
    refused("unsubscribe", SUBSCRIBES),
    refused("publish", SUBSCRIBES),
];

/// How many of [`TABLE`]'s first commands are answered.
pub const HANDLED: usize = 9;

/// Counted kinds: each answered command, then `refused`, then `other`
/// (unknown names).
pub const KINDS: usize = HANDLED + 2;

/// The command named `name`.
pub fn lookup(name: &str) -> Option<&'static Command> {
    TABLE.iter().find(|c| c.name == name)
}

/// The counted kind of a command name (an index below [`KINDS`]).
pub fn kind(name: &str) -> usize {
    match TABLE.iter().position(|c| c.name == name) {
        Some(i) if i < HANDLED => i,
        Some(_) => HANDLED,
        None => HANDLED + 1,
    }
}

/// The label of counted kind `i` (metrics, `statistics`).
pub fn kind_label(i: usize) -> &'static str {
    match i {
        i if i < HANDLED => TABLE[i].name,
        i if i == HANDLED => "refused",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_answered_commands_first_and_each_name_once() {
        assert!(TABLE[..HANDLED].iter().all(|c| !matches!(c.handler, Handler::Refused(_))));
        assert!(TABLE[HANDLED..].iter().all(|c| matches!(c.handler, Handler::Refused(_))));
        let names: std::collections::HashSet<_> = TABLE.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), TABLE.len());
        assert_eq!((kind("offer"), kind("publish"), kind("nonsense")), (1, HANDLED, HANDLED + 1));
        assert_eq!((kind_label(1), kind_label(HANDLED), kind_label(HANDLED + 1)), ("offer", "refused", "other"));
    }

    /// docs/ng.md's command table is this table: every name, with its
    /// status, and no other.
    #[test]
    fn docs_list_exactly_these_commands() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ng.md")).expect("docs/ng.md");
        let section = doc.split("## Commands").nth(1).expect("a Commands section");
        let mut documented = std::collections::BTreeMap::new();
        for row in section.lines().skip(3).take_while(|l| l.starts_with('|')) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            for name in cells[1].split('`').skip(1).step_by(2) {
                documented.insert(name.to_string(), cells[2].to_string());
            }
        }
        for c in TABLE {
            let status = if matches!(c.handler, Handler::Refused(_)) { "refused" } else { "honoured" };
            assert_eq!(documented.remove(c.name).as_deref(), Some(status), "docs/ng.md on {:?}", c.name);
        }
        assert!(documented.is_empty(), "docs/ng.md lists commands the engine does not know: {documented:?}");
    }
}
