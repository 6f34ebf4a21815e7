//! ws-node
