//! Rooms spanning nodes over the in-process hub: the same state machine the Redis bus
//! drives (redis.rs runs the same scenarios over a real Redis).

mod common;

use std::sync::Arc;

use common::spanning as scenario;
use common::{TestNode, config};
use ws_node::{Bus, LocalHub};

async fn nodes(hub: &LocalHub, n: usize) -> Vec<TestNode> {
    let mut v = Vec::new();
    for i in 0..n {
        let id = format!("n{i}");
        let bus: Arc<dyn Bus> = Arc::new(hub.bus(&id));
        v.push(TestNode::with_bus(config(&id), bus).await);
    }
    v
}

#[tokio::test]
async fn a_room_on_three_nodes_has_one_order() {
    scenario::a_room_on_three_nodes_has_one_order(&nodes(&LocalHub::new(), 3).await).await;
}

#[tokio::test]
async fn seq_continues_and_presence_crosses_nodes() {
    scenario::seq_continues_and_presence_crosses_nodes(&nodes(&LocalHub::new(), 2).await).await;
}

#[tokio::test]
async fn a_joiner_misses_nothing_while_20_senders_publish() {
    scenario::a_joiner_misses_nothing_while_20_senders_publish(&nodes(&LocalHub::new(), 2).await)
        .await;
}

#[tokio::test]
async fn a_room_back_on_one_node_stops_using_the_bus() {
    scenario::a_room_back_on_one_node_stops_using_the_bus(&nodes(&LocalHub::new(), 2).await).await;
}

#[tokio::test]
async fn a_dead_node_is_pruned_and_its_members_leave() {
    let hub = LocalHub::new();
    let ns = nodes(&hub, 2).await;
    scenario::a_dead_node_is_pruned_and_its_members_leave(&ns, || hub.kill("n1")).await;
}
