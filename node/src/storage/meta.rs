//! Settings of the data dir kept in the database: the network id, the node's identity, whether
//! it left the network.

use super::*;

impl Storage {
    /// The network id recorded in the database (read before the network starts: a node with
    /// data only ever talks to its own network).
    pub fn network(&self) -> Result<NetworkId> {
        let txn = self.db.begin_read()?;
        let text = txn.open_table(META_TEXT)?;
        let network = text
            .get(META_NETWORK)?
            .map(|v| v.value().to_string())
            .ok_or_else(|| {
                StorageError::Unusable(format!(
                    "the database {} records no network id",
                    self.path.display()
                ))
            })?;
        Ok(NetworkId::from(network))
    }

    /// Records that this node left the network (its goodbye follows): it never starts from
    /// this database again.
    pub fn mark_left(&self, when: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(META_TEXT)?.insert(META_LEFT, when)?;
        txn.commit()?;
        Ok(())
    }

    /// When this node left the network, if it did.
    pub fn left(&self) -> Result<Option<String>> {
        let txn = self.db.begin_read()?;
        let text = txn.open_table(META_TEXT)?;
        Ok(text.get(META_LEFT)?.map(|v| v.value().to_string()))
    }

    /// Binds the database to the node's identity: records `peer` on the first start, and
    /// refuses another one later (a node's keys, promises and membership are its own; another
    /// identity on top of them would be a second node claiming the first one's promises).
    pub fn bind_identity(&self, peer: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        let recorded = {
            let text = txn.open_table(META_TEXT)?;
            text.get(META_PEER)?.map(|v| v.value().to_string())
        };
        match recorded {
            Some(r) if r == peer => Ok(()),
            // An operator's mix-up, not damage: the right file is somewhere (exit 1).
            Some(r) => Err(StorageError::Fatal(format!(
                "the database belongs to peer {r}, but identity.key is peer {peer}: a database is \
                 never used under another identity. Put that node's identity.key back, or move \
                 the data dir away and start this machine as a new node (with --bootstrap of a \
                 member)"
            ))),
            None => {
                txn.open_table(META_TEXT)?.insert(META_PEER, peer)?;
                txn.commit()?;
                Ok(())
            }
        }
    }
}
