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

#[derive(Default)]
pub(super) struct Inodes {
    by_node: HashMap<Node, u64>,
    nodes: Vec<Node>,
}

impl Inodes {
    pub(super) fn new() -> Inodes {
        let mut t = Inodes::default();
        t.ino(Node::Root);
        t
    }
    pub(super) fn ino(&mut self, node: Node) -> u64 {
        if let Some(&ino) = self.by_node.get(&node) {
            return ino;
        }
        self.nodes.push(node.clone());
        let ino = self.nodes.len() as u64; // the root is 1
        self.by_node.insert(node, ino);
        ino
    }
    pub(super) fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino).ok()?.checked_sub(1)?)
    }
}
