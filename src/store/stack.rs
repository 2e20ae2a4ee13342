//! Two tiers as one: an upper one (the disk) over a lower one (a team's bucket), as "Adding a
//! tier" in [`super::tier`] describes.
//!
//! - what is held is the longer prefix of the two (the size and content type of either);
//! - a read goes to the upper tier when it holds the offset, else to the lower one; what the
//!   lower one returns at the end of the upper one's prefix is written through to the upper one,
//!   so a recording read from the bucket is on disk afterwards (one bucket read per recording);
//! - a writer writes through to both, each taking what it takes (either may stop);
//! - a lease holds both; a complete local file only comes from the upper tier (the lower one may
//!   have one too; it is asked second);
//! - *backfill*: a recording the upper tier holds complete and the lower one lacks is copied
//!   down, in a blocking task, from the upper tier's bytes: when a download ended without the
//!   lower one having taken it whole (it resumed a prefix an earlier mount kept on disk, or the
//!   lower one refused some of it), and the first time this process sees such a recording
//!   otherwise (kept on disk before the lower tier was stacked). So every recording the disk
//!   holds complete reaches the bucket once it is used, whatever way it was fetched.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::tier::{
    CompleteFile, ReserveFuture, Reserved, StoredRecording, Tier, TierLease, TierWriter,
};

/// `upper` over `lower`. See the module docs.
pub struct Stack {
    upper: Arc<dyn Tier>,
    lower: Arc<dyn Tier>,
    me: Weak<Stack>,
    /// Recordings this process had a writer for or backfilled (each is backfilled at most once
    /// from [`Tier::get`]; a writer decides for its own download).
    seen: Mutex<HashSet<String>>,
}

/// How long a backfill waits for the upper tier to count a just-finished download complete.
const BACKFILL_WAIT: Duration = Duration::from_secs(3);

impl Stack {
    pub fn new(upper: Arc<dyn Tier>, lower: Arc<dyn Tier>) -> Arc<Stack> {
        Arc::new_cyclic(|me| Stack {
            upper,
            lower,
            me: me.clone(),
            seen: Mutex::new(HashSet::new()),
        })
    }

    /// Copies `id` from the upper tier to the lower one in a blocking task, if the upper one
    /// holds it complete (within [`BACKFILL_WAIT`]) and the lower one does not.
    fn spawn_backfill(&self, id: &str) {
        let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let id = id.to_string();
        rt.spawn_blocking(move || me.backfill(&id));
    }

    fn backfill(&self, id: &str) {
        let deadline = Instant::now() + BACKFILL_WAIT;
        let up = loop {
            match self.upper.get(id) {
                Some(s) if s.complete() => break s,
                _ if Instant::now() >= deadline => return,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        if self.lower.get(id).is_some_and(|l| l.complete()) {
            return;
        }
        let (Some(size), Ok(rt)) = (up.size, tokio::runtime::Handle::try_current()) else {
            return;
        };
        let _lease = self.upper.lease(id);
        let mut w = self.lower.clone().writer(id);
        w.learn(up.size, up.content_type.as_deref());
        let mut at = 0u64;
        while at < size {
            // A short read or a refusal ends it; the writer, dropped incomplete, keeps nothing.
            let Some(b) = self.upper.read(id, at, 1 << 20) else {
                return;
            };
            let Some(room) = rt.block_on(w.reserve(b.len())) else {
                return;
            };
            let n = b.len() as u64;
            w.append(at, b, room);
            at += n;
        }
        tracing::debug!("recording {id}: copied down from the upper tier ({size} bytes)");
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
        let (u, l) = (self.upper.get(id), self.lower.get(id));
        if u.as_ref().is_some_and(|u| u.complete())
            && !l.as_ref().is_some_and(|l| l.complete())
            && self.seen.lock().unwrap().insert(id.to_string())
        {
            self.spawn_backfill(id);
        }
        match (u, l) {
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
        self.seen.lock().unwrap().insert(id.to_string());
        Box::new(StackWriter {
            upper: Some(self.upper.clone().writer(id)),
            lower: Some(self.lower.clone().writer(id)),
            rooms: Mutex::new(VecDeque::new()),
            lower_took: Mutex::new(Some(0)),
            size: None,
            id: id.to_string(),
            stack: self,
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
    /// How far the lower writer took the download contiguously from byte 0; `None` once it
    /// missed a piece (a download that started past 0, a refused reserve).
    lower_took: Mutex<Option<u64>>,
    size: Option<u64>,
    id: String,
    stack: Arc<Stack>,
}

impl Drop for StackWriter {
    fn drop(&mut self) {
        // Dropping the writers first ends their downloads in both tiers.
        self.upper.take();
        self.lower.take();
        let whole = matches!(
            (*self.lower_took.get_mut().unwrap(), self.size),
            (Some(took), Some(size)) if took == size
        );
        if !whole {
            self.stack.spawn_backfill(&self.id);
        }
    }
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
        {
            let mut took = self.lower_took.lock().unwrap();
            *took = match (*took, &l) {
                (Some(t), Some(_)) if offset <= t => Some(t.max(offset + data.len() as u64)),
                _ => None,
            };
        }
        if let (Some(w), Some(r)) = (&self.lower, l) {
            w.append(offset, data, r);
        }
    }

    fn learn(&mut self, size: Option<u64>, content_type: Option<&str>) {
        if size.is_some() {
            self.size = size;
        }
        if let Some(w) = self.upper.as_mut() {
            w.learn(size, content_type);
        }
        if let Some(w) = self.lower.as_mut() {
            w.learn(size, content_type);
        }
    }
}
