//! Reading back what the core recovers, checking every record's checksum.

use super::*;

/// What [`Storage::load`] found.
pub struct Loaded {
    pub recovered: Recovered,
    /// Keys whose record failed its checksum: the node abstains for them (they are in
    /// [`Recovered::damaged`]) until it learns their decisions.
    pub damaged_keys: Vec<String>,
    /// Request records that failed their checksum (dropped: a retry with that id runs anew).
    pub damaged_requests: usize,
    /// Bytes of an incomplete or damaged record at the end of the write-ahead log, dropped.
    pub torn_log_bytes: u64,
}

impl Storage {
    /// The durable state, as the core wants it after a restart: what is in flight (the open
    /// records, each checked), the membership, counters and request records. Decisions stay
    /// on disk: the core reads them through [`Storage::decision_reader`] when it needs one,
    /// so a restart takes as long with a million keys stored as with none. A key whose open
    /// record is damaged is left out, and named in [`Recovered::damaged`]: this node abstains
    /// for it (no promise, no accept, no answer to a read's question) until it learns its
    /// decision; the majorities of its cluster carry on without it. A damaged decided record
    /// is found when it is read, with the same effect.
    pub fn load(&mut self) -> Result<Loaded> {
        let loaded = without_panics(&self.path, || self.load_checked())?;
        if !loaded.damaged_keys.is_empty() {
            error!(
                keys = loaded.damaged_keys.len(),
                first = %loaded.damaged_keys[0],
                "records in the database failed their checksum: this node abstains for those keys (no promise, no accept, no answer to a read) until it learns their decisions from its cluster"
            );
        }
        if loaded.damaged_requests > 0 {
            warn!(
                requests = loaded.damaged_requests,
                "request records failed their checksum: dropped (a retry with such an X-Request-Id runs anew)"
            );
        }
        Ok(loaded)
    }

    pub(super) fn load_checked(&self) -> Result<Loaded> {
        let network = self.network()?;
        let txn = self.db.begin_read()?;
        let mut rec = Recovered::joiner(network);
        let mut damaged_keys = Vec::new();
        let mut damaged_requests = 0;
        let records = txn.open_table(RECORDS)?;
        for entry in txn.open_table(OPEN_RECORDS)?.iter()? {
            let (at, _) = entry?;
            let at = at.value();
            let sealed = records.get(at)?;
            let Some(key) = key_text(at) else {
                damaged_keys.push(String::from_utf8_lossy(at).into_owned());
                continue;
            };
            let state = sealed.and_then(|s| {
                open_record(key.as_bytes(), s.value()).and_then(|b| decode_record(b).ok())
            });
            match state {
                Some(state) => {
                    rec.keys.insert(key.into(), state);
                }
                None => {
                    rec.damaged.insert(key.into());
                    damaged_keys.push(key.to_string());
                }
            }
        }
        for entry in txn.open_table(REQUESTS)?.iter()? {
            let (k, v) = entry?;
            let record =
                open_record(k.value(), v.value()).and_then(|bytes| decode_record(bytes).ok());
            match (std::str::from_utf8(k.value()), record) {
                (Ok(id), Some(record)) => {
                    rec.requests.insert(id.into(), record);
                }
                _ => damaged_requests += 1,
            }
        }
        for entry in txn.open_table(DEPARTED)?.iter()? {
            let (k, _) = entry?;
            let node = std::str::from_utf8(k.value()).map_err(|_| {
                StorageError::Unusable(format!(
                    "the database {} is damaged: a departed node's id is not UTF-8",
                    self.path.display()
                ))
            })?;
            rec.departed.insert(NodeId::new(node));
        }
        for entry in txn.open_table(MEMBERS)?.iter()? {
            let (k, v) = entry?;
            rec.members
                .insert(NodeId::new(k.value()), ClusterId::new(v.value()));
        }
        for entry in txn.open_table(CAUGHT_UP)?.iter()? {
            let (k, v) = entry?;
            rec.caught_up.insert(NodeId::new(k.value()), v.value());
        }
        let meta = txn.open_table(META)?;
        let number = |name| -> Result<u64> { Ok(meta.get(name)?.map(|v| v.value()).unwrap_or(0)) };
        rec.counter_ceiling = number(META_COUNTER_CEILING)?;
        rec.round_ceiling = number(META_ROUND_CEILING)?;
        rec.ready = number(META_READY)? == 1;
        rec.last_decision = number(META_LAST_DECISION)?;
        if let Some(floor) = txn.open_table(META_RECORDS)?.get(META_FLOOR)? {
            let key = META_FLOOR.as_bytes();
            let floor = open_record(key, floor.value()).and_then(|b| decode_record(b).ok());
            rec.floor = floor.ok_or_else(|| {
                StorageError::Unusable(format!(
                    "the database {} is corrupt: the ballot floor (the promises this node folded together) failed its checksum, and no other node can tell it; this node must not promise again. Move the data dir away and start this machine as a new node (with --bootstrap of a member), after `replicator remove` of this one",
                    self.path.display()
                ))
            })?;
        }
        // Writes in the log that the database does not hold yet (a checkpoint that could not
        // run): the same ops, applied by the core's own rules, on top.
        rec.apply_all(&self.unapplied);
        Ok(Loaded {
            recovered: rec,
            damaged_keys,
            damaged_requests,
            torn_log_bytes: self.torn_at_open,
        })
    }
}

impl Storage {
    /// Everything this storage holds as one image: what a restart loads, and every decision
    /// read back through [`Storage::decision_reader`]. For checks and tools (the node_sim
    /// checker reads every disk with it); a node's restart uses [`Storage::load`].
    pub fn load_whole(&mut self) -> Result<Loaded> {
        let mut loaded = self.load()?;
        let recovered = &mut loaded.recovered;
        self.decision_reader(Default::default())
            .every_decision(|d| {
                let state = DurableKey::Stored {
                    chosen: d.chosen,
                    seq: d.seq,
                };
                recovered.apply(&WriteOp::PutKey { key: d.key, state });
            })
            .map_err(|_| {
                StorageError::Unusable(format!(
                    "cannot read the decisions of {}",
                    self.path.display()
                ))
            })?;
        Ok(loaded)
    }
}
