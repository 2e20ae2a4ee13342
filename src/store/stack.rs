//! Two tiers as one: an upper one (the disk) over a lower one (a team's bucket), as "Adding a
//! tier" in [`super::tier`] describes.
//!
//! - what is held is the longer prefix of the two (the size and content type of either);
//! - a read goes to the upper tier when it holds the offset, else to the lower one; what the
//!   lower one returns at the end of the upper one's prefix is written through to the upper one,
//!   so a recording read from the bucket is on disk afterwards (one bucket read per recording);
//! - a writer writes through to both, each taking what it takes (either may stop);
//! - a lease holds both; a complete local file only comes from the upper tier (the lower one may
//!   have one too; it is asked second).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::tier::{
    CompleteFile, ReserveFuture, Reserved, StoredRecording, Tier, TierLease, TierWriter,
};

/// `upper` over `lower`. See the module docs.
pub struct Stack {
    upper: Arc<dyn Tier>,
    lower: Arc<dyn Tier>,
}

impl Stack {
    pub fn new(upper: Arc<dyn Tier>, lower: Arc<dyn Tier>) -> Arc<Stack> {
        Arc::new(Stack { upper, lower })
    }

    /// Writes `data`, read from the lower tier at `offset`, to the upper tier if it continues
    /// what the upper one holds. Runs in the blocking context of [`Tier::read`].
    fn fill_upper(&self, id: &str, offset: u64, data: &Bytes, below: &StoredRecording) {
        let held = self.upper.get(id).map_or(0, |s| s.stored);
        if offset > held || offset + data.len() as u64 <= held {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut w = self.upper.clone().writer(id);
        w.learn(below.size, below.content_type.as_deref());
        if let Some(room) = rt.block_on(w.reserve(data.len())) {
            w.append(offset, data.clone(), room);
        }
    }
}

impl Tier for Stack {
    fn get(&self, id: &str) -> Option<StoredRecording> {
        match (self.upper.get(id), self.lower.get(id)) {
            (Some(u), Some(l)) => {
                let size = u.size.or(l.size);
                let content_type = u.content_type.clone().or(l.content_type.clone());
                Some(StoredRecording {
                    size,
                    content_type,
                    stored: u.stored.max(l.stored),
                })
            }
            (a, b) => a.or(b),
        }
    }

    fn read(&self, id: &str, offset: u64, len: usize) -> Option<Bytes> {
        let upper = self.upper.get(id);
        if upper.as_ref().is_some_and(|u| offset < u.stored)
            && let Some(b) = self.upper.read(id, offset, len)
        {
            return Some(b);
        }
        let lower = self.lower.get(id)?;
        if offset >= lower.stored {
            return None;
        }
        let b = self.lower.read(id, offset, len)?;
        self.fill_upper(id, offset, &b, &lower);
        Some(b)
    }

    fn lease(&self, id: &str) -> TierLease {
        Box::new((self.upper.lease(id), self.lower.lease(id)))
    }

    fn writer(self: Arc<Self>, id: &str) -> Box<dyn TierWriter> {
        Box::new(StackWriter {
            upper: Some(self.upper.clone().writer(id)),
            lower: Some(self.lower.clone().writer(id)),
            rooms: Mutex::new(VecDeque::new()),
        })
    }

    fn open_complete(&self, id: &str) -> Option<CompleteFile> {
        self.upper
            .open_complete(id)
            .or_else(|| self.lower.open_complete(id))
    }
}

/// Both tiers' writers. Each `reserve` is followed by the `append` it reserved for, in order
/// (the media layer's contract), so the two rooms of a reserve wait in `rooms` for it.
struct StackWriter {
    upper: Option<Box<dyn TierWriter>>,
    lower: Option<Box<dyn TierWriter>>,
    rooms: Mutex<VecDeque<(Option<Reserved>, Option<Reserved>)>>,
}

impl TierWriter for StackWriter {
    fn reserve(&self, len: usize) -> ReserveFuture<'_> {
        // The futures are made here: a writer is `Send`, not `Sync`, so the future returned
        // must not hold a reference to one.
        let u = self.upper.as_ref().map(|w| w.reserve(len));
        let l = self.lower.as_ref().map(|w| w.reserve(len));
        let rooms = &self.rooms;
        Box::pin(async move {
            let u = match u {
                Some(f) => f.await,
                None => None,
            };
            let l = match l {
                Some(f) => f.await,
                None => None,
            };
            if u.is_none() && l.is_none() {
                return None;
            }
            rooms.lock().unwrap().push_back((u, l));
            Some(Reserved::new(()))
        })
    }

    fn append(&self, offset: u64, data: Bytes, room: Reserved) {
        drop(room);
        let Some((u, l)) = self.rooms.lock().unwrap().pop_front() else {
            return;
        };
        if let (Some(w), Some(r)) = (&self.upper, u) {
            w.append(offset, data.clone(), r);
        }
        if let (Some(w), Some(r)) = (&self.lower, l) {
            w.append(offset, data, r);
        }
    }

    fn learn(&mut self, size: Option<u64>, content_type: Option<&str>) {
        if let Some(w) = self.upper.as_mut() {
            w.learn(size, content_type);
        }
        if let Some(w) = self.lower.as_mut() {
            w.learn(size, content_type);
        }
    }
}
