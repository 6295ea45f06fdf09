//! Who relays an outbox, and how far it has got.
//!
//! - **Embedded**: the relay's position is a row in the broker, written in
//!   the same transaction as the events it published, so each outbox row is
//!   published exactly once.
//! - **Cluster**: several nodes may see the same outbox (nodes on one
//!   machine share its file). Each outbox is relayed by one node at a time:
//!   the holder of the lease `outbox:HOST:PATH#TABLE`, renewed on every pass
//!   and taken over by another node within the cluster's `lease` once the
//!   holder dies. The position lives in PostgreSQL
//!   (`gantry_relay_positions`) and is advanced only while the lease (with
//!   its fencing number) is still held, so a node that lost its lease
//!   cannot move it. The position is recorded after the publish: a node
//!   killed between the two leaves rows that its successor publishes again,
//!   and the broker's deduplication by `(source, id)` drops them when they
//!   reach the same broker.

use std::time::Duration;

use gantry_cluster::migrate::Migrations;
use gantry_cluster::{Leases, PgError, Postgres};
use gantry_manifest::Outbox;

use crate::broker::{Published, RelayedEvent};
use crate::EventBus;

const POSTGRES: Migrations = Migrations {
    store: "outbox_relays",
    steps: &["CREATE TABLE gantry_relay_positions (
                 relay TEXT PRIMARY KEY,
                 position BIGINT NOT NULL,
                 holder TEXT NOT NULL,
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now());"],
};

/// The cluster's relay positions and the leases that say who relays.
#[derive(Debug, Clone)]
pub struct SharedRelays {
    pg: Postgres,
    leases: Leases,
    /// This process (`node/incarnation`).
    holder: String,
    /// How long a lease lasts without renewal.
    ttl: Duration,
    /// This machine, so nodes on different machines (different files under
    /// the same path) relay their own outboxes.
    host: String,
}

impl SharedRelays {
    pub async fn new(
        pg: Postgres,
        leases: Leases,
        holder: String,
        ttl: Duration,
    ) -> Result<SharedRelays, PgError> {
        gantry_cluster::migrate::postgres(&pg, &POSTGRES).await?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Ok(SharedRelays {
            pg,
            leases,
            holder,
            ttl,
            host,
        })
    }
}

/// Where relay positions are kept: see the module's documentation.
#[derive(Debug, Clone, Default)]
pub(crate) enum Positions {
    #[default]
    Broker,
    Shared(SharedRelays),
}

/// A relay's right to one pass over its outbox.
#[derive(Debug, Clone)]
pub(crate) struct Turn {
    /// The position's name.
    relay: String,
    /// The lease's fencing number (cluster only).
    fence: Option<i64>,
}

impl Positions {
    /// The name of the outbox's relay and position.
    pub(crate) fn relay_name(&self, service: &str, config: &Outbox) -> String {
        match self {
            Positions::Broker => format!("outbox:{service}"),
            Positions::Shared(shared) => {
                let path = std::fs::canonicalize(&config.database)
                    .unwrap_or_else(|_| config.database.clone());
                format!("outbox:{}:{}#{}", shared.host, path.display(), config.table)
            }
        }
    }

    /// Whether this node relays `relay` now; `None` while another node does.
    pub(crate) async fn turn(&self, relay: &str) -> Result<Option<Turn>, String> {
        match self {
            Positions::Broker => Ok(Some(Turn {
                relay: relay.to_string(),
                fence: None,
            })),
            Positions::Shared(shared) => Ok(shared
                .leases
                .acquire(relay, &shared.holder, shared.ttl)
                .await
                .map_err(|e| e.to_string())?
                .map(|fence| Turn {
                    relay: relay.to_string(),
                    fence: Some(fence),
                })),
        }
    }

    /// How long a node that is not relaying waits before asking again.
    pub(crate) fn idle_wait(&self, poll: Duration) -> Duration {
        match self {
            Positions::Broker => poll,
            Positions::Shared(shared) => poll.max(shared.ttl / 4),
        }
    }

    /// The last outbox row published.
    pub(crate) async fn position(&self, bus: &EventBus, turn: &Turn) -> Result<i64, String> {
        match self {
            Positions::Broker => bus
                .broker()
                .relay_position(&turn.relay)
                .await
                .map_err(|e| e.to_string()),
            Positions::Shared(shared) => {
                let client = shared.pg.client().await.map_err(|e| e.to_string())?;
                let row = client
                    .query_opt(
                        "SELECT position FROM gantry_relay_positions WHERE relay = $1",
                        &[&turn.relay],
                    )
                    .await
                    .map_err(|e| PgError::query("reading a relay position")(e).to_string())?;
                Ok(row.map_or(0, |row| row.get(0)))
            }
        }
    }

    /// Publishes `events` and records `last_row` as relayed. In a cluster
    /// the position moves only while this node still holds the turn's
    /// lease; `Ok(None)` says it lost it (the events are published all the
    /// same, and the next holder's duplicates are dropped by deduplication).
    pub(crate) async fn publish(
        &self,
        bus: &EventBus,
        turn: &Turn,
        last_row: i64,
        events: Vec<RelayedEvent>,
    ) -> Result<Option<Vec<(String, Published)>>, String> {
        let outcomes = bus
            .broker()
            .publish_relayed(&turn.relay, last_row, events)
            .await
            .map_err(|e| e.to_string())?;
        match self {
            Positions::Broker => Ok(Some(outcomes)),
            Positions::Shared(shared) => {
                let moved = shared
                    .advance(&turn.relay, turn.fence.unwrap_or_default(), last_row)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(moved.then_some(outcomes))
            }
        }
    }
}

impl SharedRelays {
    /// Moves `relay`'s position forward to `to` if this process still holds
    /// lease `relay` with `fence`; false when it does not.
    async fn advance(&self, relay: &str, fence: i64, to: i64) -> Result<bool, PgError> {
        let client = self.pg.client().await?;
        let moved = client
            .execute(
                "INSERT INTO gantry_relay_positions (relay, position, holder)
                 SELECT $1, $2, $3
                 WHERE EXISTS (SELECT 1 FROM gantry_leases
                               WHERE name = $1 AND holder = $3 AND fence = $4 AND expires_at > now())
                 ON CONFLICT (relay) DO UPDATE SET
                    position = GREATEST(gantry_relay_positions.position, excluded.position),
                    holder = excluded.holder,
                    updated_at = now()",
                &[&relay, &to, &self.holder, &fence],
            )
            .await
            .map_err(PgError::query("recording a relay position"))?;
        Ok(moved == 1)
    }
}

/// One suite for both kinds of position: a relay's position follows what
/// it published, per relay; and in a cluster, one node relays at a time and
/// a node that lost its lease cannot move the position.
#[cfg(test)]
mod conformance {
    use super::*;

    fn bus(dir: &std::path::Path) -> EventBus {
        EventBus::open(dir, crate::ServiceDirectory::default(), None).unwrap()
    }

    fn outbox(database: &str) -> Outbox {
        Outbox {
            database: database.into(),
            table: "gantry_outbox".into(),
            poll: Duration::from_millis(100),
        }
    }

    async fn positions_follow_what_was_published(positions: Positions) {
        let dir = tempfile::tempdir().unwrap();
        let bus = bus(dir.path());
        let orders = positions.relay_name("orders", &outbox("/srv/orders.db"));
        let stock = positions.relay_name("stock", &outbox("/srv/stock.db"));
        assert_ne!(orders, stock);
        let turn = positions
            .turn(&orders)
            .await
            .unwrap()
            .expect("free to relay");
        assert_eq!(positions.position(&bus, &turn).await.unwrap(), 0);
        assert!(positions
            .publish(&bus, &turn, 41, vec![])
            .await
            .unwrap()
            .is_some());
        assert_eq!(positions.position(&bus, &turn).await.unwrap(), 41);
        let turn = positions.turn(&orders).await.unwrap().expect("still ours");
        positions.publish(&bus, &turn, 57, vec![]).await.unwrap();
        assert_eq!(positions.position(&bus, &turn).await.unwrap(), 57);
        // Another outbox has its own position.
        let other = positions
            .turn(&stock)
            .await
            .unwrap()
            .expect("free to relay");
        assert_eq!(positions.position(&bus, &other).await.unwrap(), 0);
    }

    async fn one_node_relays_and_a_deposed_one_cannot_move_the_position(
        pg: Postgres,
        leases: Leases,
    ) {
        let ttl = Duration::from_millis(400);
        let first = Positions::Shared(
            SharedRelays::new(pg.clone(), leases.clone(), "n1/a".into(), ttl)
                .await
                .unwrap(),
        );
        let second = Positions::Shared(
            SharedRelays::new(pg, leases, "n2/b".into(), ttl)
                .await
                .unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let bus = bus(dir.path());
        let relay = first.relay_name("orders", &outbox("/srv/orders.db"));
        assert_eq!(
            relay,
            second.relay_name("orders", &outbox("/srv/orders.db"))
        );
        let turn = first.turn(&relay).await.unwrap().expect("free to relay");
        assert!(second.turn(&relay).await.unwrap().is_none(), "n1 relays");
        first.publish(&bus, &turn, 10, vec![]).await.unwrap();
        // n1 goes quiet; n2 takes over after the lease and carries on.
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let taken = second
            .turn(&relay)
            .await
            .unwrap()
            .expect("n1's lease lapsed");
        assert_eq!(second.position(&bus, &taken).await.unwrap(), 10);
        // n1 wakes up with its old turn: its position write is refused.
        assert!(first
            .publish(&bus, &turn, 99, vec![])
            .await
            .unwrap()
            .is_none());
        assert_eq!(second.position(&bus, &taken).await.unwrap(), 10);
        assert!(second
            .publish(&bus, &taken, 20, vec![])
            .await
            .unwrap()
            .is_some());
        assert_eq!(first.position(&bus, &taken).await.unwrap(), 20);
    }

    #[tokio::test]
    async fn embedded_positions_follow_what_was_published() {
        positions_follow_what_was_published(Positions::Broker).await;
    }

    #[tokio::test]
    async fn cluster_positions_follow_what_was_published() {
        let Some((pg, leases)) = cluster("relaypositions").await else {
            return;
        };
        let shared = SharedRelays::new(pg, leases, "n1/a".into(), Duration::from_secs(10))
            .await
            .unwrap();
        positions_follow_what_was_published(Positions::Shared(shared)).await;
    }

    #[tokio::test]
    async fn in_a_cluster_one_node_relays_and_a_deposed_one_cannot_move_the_position() {
        let Some((pg, leases)) = cluster("relayfencing").await else {
            return;
        };
        one_node_relays_and_a_deposed_one_cannot_move_the_position(pg, leases).await;
    }

    async fn cluster(tag: &str) -> Option<(Postgres, Leases)> {
        let options = gantry_cluster::testing::fresh_schema(tag).await?;
        let cluster = gantry_cluster::Cluster::connect(&options, "n1")
            .await
            .unwrap();
        Some((cluster.postgres().clone(), cluster.leases().clone()))
    }
}
