//! Inodes: every node of the tree gets a number on first sight, kept for the mount's life.
//!
//! The kernel refers to files by inode number; ringfs hands them out per [`Node`] (what a path
//! names: a date, a session directory, a recording file, ...) and never reuses one, so an inode
//! the kernel still holds always names the same thing. The root is inode 1.

use std::collections::HashMap;

use jiff::civil::Date;

/// Where a node hangs in the tree. Inode numbers are handed out per node on first sight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Node {
    Root,
    Date(Date),
    /// A session directory, in a date (`by_session == false`) or under by-session.
    SessionDir {
        session: String,
        by_session: bool,
    },
    CallJson {
        session: String,
        by_session: bool,
    },
    /// `calls.csv` of a date.
    CallsCsv(Date),
    /// A recording file in a session directory.
    RecFile {
        id: String,
        by_session: bool,
    },
    BySession,
    ByRecording,
    /// `by-recording/<id>.<ext>`.
    ByRecFile(String),
}

pub(super) const BY_SESSION: &str = "by-session";
pub(super) const BY_RECORDING: &str = "by-recording";
pub(super) const CALL_JSON: &str = "call.json";
pub(super) const CALLS_CSV: &str = "calls.csv";

/// Each node is held once, in `nodes`; the index from node to number holds its hash only (a
/// node's strings held twice cost about 60 bytes per node: 14 MB for the 230,000 nodes of a
/// walk of 100,000 calls). Two nodes with one hash (practically never) are told apart in
/// `collided`.
#[derive(Default)]
pub(super) struct Inodes {
    /// Node hash -> the first inode number handed out for a node with that hash.
    by_hash: HashMap<u64, u64>,
    /// Node hash -> later inode numbers for other nodes with the same hash.
    collided: HashMap<u64, Vec<u64>>,
    nodes: Vec<Node>,
    hasher: std::hash::RandomState,
}

impl Inodes {
    pub(super) fn new() -> Inodes {
        let mut t = Inodes::default();
        t.ino(Node::Root);
        t
    }
    pub(super) fn ino(&mut self, node: Node) -> u64 {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(&node);
        let same = |ino: &u64| self.node(*ino) == Some(&node);
        if let Some(&ino) = self.by_hash.get(&h) {
            if same(&ino) {
                return ino;
            }
            if let Some(&ino) = self
                .collided
                .get(&h)
                .and_then(|l| l.iter().find(|i| same(i)))
            {
                return ino;
            }
            let ino = self.push(node);
            self.collided.entry(h).or_default().push(ino);
            return ino;
        }
        let ino = self.push(node);
        self.by_hash.insert(h, ino);
        ino
    }
    fn push(&mut self, node: Node) -> u64 {
        self.nodes.push(node);
        self.nodes.len() as u64 // the root is 1
    }
    pub(super) fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino).ok()?.checked_sub(1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_keeps_its_number_and_others_get_new_ones() {
        let mut t = Inodes::new();
        let a = t.ino(Node::BySession);
        let s = |id: &str| Node::SessionDir {
            session: id.into(),
            by_session: false,
        };
        let b = t.ino(s("1"));
        let c = t.ino(s("2"));
        assert_eq!(
            (t.ino(Node::Root), t.ino(Node::BySession), t.ino(s("1"))),
            (1, a, b)
        );
        assert!(a != b && b != c && a > 1);
        assert_eq!(t.node(c), Some(&s("2")));
        assert_eq!(t.node(0), None);
    }

    #[test]
    fn nodes_with_one_hash_get_different_numbers() {
        let mut t = Inodes::new();
        // Force a collision: file a second node under the first one's hash by hand.
        let first = t.ino(Node::BySession);
        let h = {
            use std::hash::BuildHasher;
            t.hasher.hash_one(Node::ByRecording)
        };
        t.by_hash.insert(h, first);
        let second = t.ino(Node::ByRecording);
        assert_ne!(second, first);
        assert_eq!(t.ino(Node::ByRecording), second);
        assert_eq!(t.ino(Node::BySession), first);
        assert_eq!(t.node(second), Some(&Node::ByRecording));
    }
}
