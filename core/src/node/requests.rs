//! The at-most-once request table (core/PROTOCOL.md, "At-most-once requests"): for each
//! client request id, the key, a fingerprint of the value, the latest proposal run for it and
//! its outcome once definite. Bounded by `requests_max`, expired after `request_ttl`, oldest
//! first; a request whose PUT is still running is never forgotten.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::storage::{RequestOutcome, RequestRecord, WriteOp};
use crate::types::{Key, ProposalId, RequestId, Time, Value, fnv1a};

use super::outbox::Outbox;

pub(crate) struct RequestTable {
    records: BTreeMap<RequestId, RequestRecord>,
    /// Request ids by arrival, with the time this node learned of them, for expiry.
    order: BTreeMap<u64, (RequestId, Time)>,
    next_seq: u64,
    records_max: usize,
    ttl: Duration,
}

impl RequestTable {
    /// The table of a node (re)started at `now`: recovered records expire as if they had
    /// arrived now (the node cannot know when they did).
    pub fn new(
        recovered: BTreeMap<RequestId, RequestRecord>,
        now: Time,
        records_max: usize,
        ttl: Duration,
    ) -> RequestTable {
        let mut table = RequestTable {
            records: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            records_max,
            ttl,
        };
        for (id, record) in recovered {
            table.next_seq = table.next_seq.max(record.seq + 1);
            let earlier = table.order.insert(record.seq, (id.clone(), now));
            assert!(
                earlier.is_none(),
                "two request records with seq {}",
                record.seq
            );
            table.records.insert(id, record);
        }
        table
    }

    pub fn get(&self, id: &RequestId) -> Option<&RequestRecord> {
        self.records.get(id)
    }

    /// Records that `id` runs (or ran) proposal `p` for `key` = `value`, with its outcome if
    /// definite; then forgets what is too old or too much.
    #[allow(clippy::too_many_arguments)]
    pub fn remember(
        &mut self,
        id: RequestId,
        key: &Key,
        value: &Value,
        p: ProposalId,
        outcome: Option<RequestOutcome>,
        now: Time,
        running: impl Fn(&RequestId) -> bool,
        out: &mut Outbox,
    ) {
        let seq = match self.records.get(&id) {
            Some(r) => r.seq,
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let earlier = self.order.insert(seq, (id.clone(), now));
                assert!(earlier.is_none(), "request seq {seq} used twice");
                seq
            }
        };
        let record = RequestRecord {
            seq,
            key: key.clone(),
            value_fingerprint: fingerprint(value),
            proposal: p,
            outcome,
        };
        self.records.insert(id.clone(), record.clone());
        assert_eq!(self.records.len(), self.order.len());
        out.persist(WriteOp::PutRequest { id, record });
        self.expire(now, running, out);
    }

    /// The request's outcome became definite.
    pub fn set_outcome(&mut self, id: &RequestId, outcome: RequestOutcome, out: &mut Outbox) {
        let Some(record) = self.records.get_mut(id) else {
            return;
        };
        record.outcome = Some(outcome);
        let record = record.clone();
        out.persist(WriteOp::PutRequest {
            id: id.clone(),
            record,
        });
    }

    /// Forgets the oldest records while there are too many or they are too old, stopping at
    /// the first one whose PUT is still `running`.
    pub fn expire(&mut self, now: Time, running: impl Fn(&RequestId) -> bool, out: &mut Outbox) {
        while let Some((&seq, (id, at))) = self.order.first_key_value() {
            let too_many = self.records.len() > self.records_max;
            let too_old = now.since(*at) > self.ttl;
            if !(too_many || too_old) || running(id) {
                break;
            }
            let id = id.clone();
            self.order.remove(&seq);
            let forgotten = self.records.remove(&id);
            assert!(
                forgotten.is_some(),
                "request {id:?} ordered but not recorded"
            );
            out.persist(WriteOp::RemoveRequest { id });
        }
    }
}

/// FNV-1a of a value: stable across processes, enough to tell a reused request id.
pub(crate) fn fingerprint(value: &Value) -> u64 {
    fnv1a(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Output;

    fn ms(x: u64) -> Time {
        Time::from_millis(x)
    }

    fn p(counter: u64) -> ProposalId {
        ProposalId {
            coordinator: "me".into(),
            counter,
        }
    }

    fn ops(out: &mut Outbox) -> Vec<WriteOp> {
        out.flush();
        std::iter::from_fn(|| out.poll())
            .flat_map(|o| match o {
                Output::Persist { ops, .. } => ops,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn table(max: usize) -> RequestTable {
        RequestTable::new(BTreeMap::new(), ms(0), max, Duration::from_secs(1))
    }

    #[test]
    fn remembers_and_updates_one_record_per_id() {
        let (mut t, mut out) = (table(10), Outbox::new("me".into(), false));
        let id = RequestId::from("r");
        t.remember(
            id.clone(),
            &"k".into(),
            &"v".into(),
            p(1),
            None,
            ms(0),
            |_| false,
            &mut out,
        );
        t.remember(
            id.clone(),
            &"k".into(),
            &"v".into(),
            p(2),
            None,
            ms(5),
            |_| false,
            &mut out,
        );
        t.set_outcome(&id, RequestOutcome::Stored, &mut out);
        let r = t.get(&id).expect("recorded");
        assert_eq!((r.seq, &r.proposal), (0, &p(2)));
        assert_eq!(r.outcome, Some(RequestOutcome::Stored));
        assert_eq!(r.value_fingerprint, fingerprint(&"v".into()));
        assert_eq!(ops(&mut out).len(), 3);
    }

    #[test]
    fn forgets_the_oldest_beyond_the_limit_but_never_a_running_one() {
        let (mut t, mut out) = (table(2), Outbox::new("me".into(), false));
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            let running = |r: &RequestId| r.as_str() == "a";
            t.remember(
                id.into(),
                &"k".into(),
                &"v".into(),
                p(i as u64),
                None,
                ms(0),
                running,
                &mut out,
            );
        }
        // "a" is the oldest but still running: nothing is forgotten past it.
        assert!(t.get(&"a".into()).is_some());
        t.expire(ms(0), |_| false, &mut out);
        assert!(t.get(&"a".into()).is_none());
        assert!(t.get(&"c".into()).is_some());
        assert!(ops(&mut out).contains(&WriteOp::RemoveRequest { id: "a".into() }));
    }

    #[test]
    fn forgets_after_the_ttl() {
        let (mut t, mut out) = (table(10), Outbox::new("me".into(), false));
        t.remember(
            "a".into(),
            &"k".into(),
            &"v".into(),
            p(1),
            None,
            ms(0),
            |_| false,
            &mut out,
        );
        t.expire(ms(1000), |_| false, &mut out);
        assert!(t.get(&"a".into()).is_some(), "exactly the ttl: kept");
        t.expire(ms(1001), |_| false, &mut out);
        assert!(t.get(&"a".into()).is_none());
    }

    #[test]
    fn recovered_records_keep_their_order_and_new_ones_come_after() {
        let record = |seq| RequestRecord {
            seq,
            key: "k".into(),
            value_fingerprint: 0,
            proposal: p(seq),
            outcome: None,
        };
        let recovered = BTreeMap::from([("x".into(), record(7)), ("y".into(), record(3))]);
        let mut t = RequestTable::new(recovered, ms(0), 2, Duration::from_secs(1));
        let mut out = Outbox::new("me".into(), false);
        t.remember(
            "z".into(),
            &"k".into(),
            &"v".into(),
            p(9),
            None,
            ms(0),
            |_| false,
            &mut out,
        );
        assert_eq!(t.get(&"z".into()).map(|r| r.seq), Some(8));
        // Over the limit: the oldest (seq 3) goes first.
        assert!(t.get(&"y".into()).is_none());
        assert!(t.get(&"x".into()).is_some());
    }
}
