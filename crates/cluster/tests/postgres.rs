//! The cluster's coordination tables against a real PostgreSQL (see
//! `gantry_cluster::testing` for which one, and what happens when it is down).

use std::time::Duration;

use gantry_cluster::migrate::{self, Migrated, Migrations};
use gantry_cluster::{testing, Applied, Cluster, JoinError, NodeAddresses, Postgres};
use tokio_util::sync::CancellationToken;

async fn cluster(tag: &str, node: &str) -> Option<Cluster> {
    let options = testing::fresh_schema(tag).await?;
    Some(Cluster::connect(&options, node).await.expect("connects"))
}

fn addresses(port: u16) -> NodeAddresses {
    NodeAddresses {
        gateway: format!("127.0.0.1:{port}"),
        admin: "127.0.0.1:1".into(),
        api: "127.0.0.1:2".into(),
    }
}

#[tokio::test]
async fn migrations_upgrade_old_schemas_and_refuse_newer_ones() {
    let Some(options) = testing::fresh_schema("migrations").await else {
        return;
    };
    let pg = Postgres::connect(&options).await.unwrap();
    const V1: Migrations = Migrations {
        store: "things",
        steps: &["CREATE TABLE things (id BIGINT PRIMARY KEY)"],
    };
    const V2: Migrations = Migrations {
        store: "things",
        steps: &[
            "CREATE TABLE things (id BIGINT PRIMARY KEY)",
            "ALTER TABLE things ADD COLUMN name TEXT",
        ],
    };
    assert_eq!(
        migrate::postgres(&pg, &V1).await.unwrap(),
        Migrated { from: 0, to: 1 }
    );
    pg.client()
        .await
        .unwrap()
        .execute("INSERT INTO things (id) VALUES (7)", &[])
        .await
        .unwrap();
    // Three nodes starting together: the migration runs once.
    let (a, b, c) = tokio::join!(
        migrate::postgres(&pg, &V2),
        migrate::postgres(&pg, &V2),
        migrate::postgres(&pg, &V2)
    );
    let mut froms = [a.unwrap().from, b.unwrap().from, c.unwrap().from];
    froms.sort();
    assert_eq!(froms, [1, 2, 2]);
    let row = pg
        .client()
        .await
        .unwrap()
        .query_one("SELECT name FROM things WHERE id = 7", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None);
    let error = migrate::postgres(&pg, &V1).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("version 2, newer than this Gantry knows (1)"),
        "{error}"
    );
}

#[tokio::test]
async fn configurations_are_numbered_announced_and_rolled_back() {
    let Some(cluster) = cluster("config", "a").await else {
        return;
    };
    let config = cluster.config();
    assert_eq!(config.latest().await.unwrap(), None);
    let stop = CancellationToken::new();
    let mut versions = config.watch(stop.clone());

    // The watcher may repeat a version (it looks at the newest one after
    // connecting); it never skips one.
    async fn announced(versions: &mut tokio::sync::mpsc::Receiver<i64>, want: i64) {
        loop {
            let got = tokio::time::timeout(Duration::from_secs(5), versions.recv())
                .await
                .expect("announced within 5 s")
                .expect("the watcher runs");
            assert!(got <= want, "announced {got} before {want}");
            if got == want {
                return;
            }
        }
    }
    assert_eq!(
        config.apply("one", "alice", "").await.unwrap(),
        Applied::New(1)
    );
    announced(&mut versions, 1).await;
    // The same text again stores nothing and announces nothing.
    assert_eq!(
        config.apply("one", "bob", "").await.unwrap(),
        Applied::Unchanged(1)
    );
    assert_eq!(
        config.apply("two", "bob", "").await.unwrap(),
        Applied::New(2)
    );
    announced(&mut versions, 2).await;
    assert_eq!(
        config.rollback(1, "carol").await.unwrap(),
        Some(Applied::New(3))
    );
    assert_eq!(config.latest().await.unwrap(), Some((3, "one".to_string())));
    assert_eq!(config.rollback(99, "carol").await.unwrap(), None);
    let history = config.history(10).await.unwrap();
    let summary: Vec<_> = history
        .iter()
        .map(|v| (v.version, v.applied_by.as_str(), v.note.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (3, "carol", "rollback to 1"),
            (2, "bob", ""),
            (1, "alice", "")
        ]
    );
    assert_eq!(history[0].sha256, history[2].sha256);
    stop.cancel();
}

#[tokio::test]
async fn a_node_name_is_held_by_one_live_process() {
    let Some(options) = testing::fresh_schema("nodes").await else {
        return;
    };
    let first = Cluster::connect(&options, "n1").await.unwrap();
    let second = Cluster::connect(&options, "n1").await.unwrap();
    let stop = CancellationToken::new();
    let beating = first.join(&addresses(1), stop.clone()).await.unwrap();
    match second.join(&addresses(2), CancellationToken::new()).await {
        Err(JoinError::NameTaken { name, .. }) => assert_eq!(name, "n1"),
        other => panic!("expected the name to be taken, got {other:?}"),
    }
    first.report_config(Some(4), None).await;
    let nodes = first.membership().list().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].state, "up");
    assert_eq!(nodes[0].config_version, Some(4));
    assert_eq!(nodes[0].gateway, "127.0.0.1:1");
    // A refusal is kept with the version refused, beside the one still run.
    first
        .report_config(Some(4), Some((Some(5), "routes.to: no such service")))
        .await;
    let node = &first.membership().list().await.unwrap()[0];
    assert_eq!(
        (node.config_version, node.config_refused),
        (Some(4), Some(5))
    );
    assert_eq!(
        node.config_error.as_deref(),
        Some("routes.to: no such service")
    );
    first.report_config(Some(6), None).await;
    let node = &first.membership().list().await.unwrap()[0];
    assert_eq!((node.config_version, node.config_refused), (Some(6), None));
    assert_eq!(node.config_error, None);
    // A clean stop frees the name at once.
    stop.cancel();
    beating.await.unwrap();
    assert_eq!(first.membership().list().await.unwrap()[0].state, "stopped");
    second
        .join(&addresses(2), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        first.membership().list().await.unwrap()[0].gateway,
        "127.0.0.1:2"
    );
}

#[tokio::test]
async fn a_lease_has_one_holder_until_it_lapses() {
    let Some(cluster) = cluster("leases", "a").await else {
        return;
    };
    let leases = cluster.leases();
    let ttl = Duration::from_millis(300);
    assert_eq!(leases.acquire("alerts", "a", ttl).await.unwrap(), Some(1));
    assert_eq!(leases.acquire("alerts", "b", ttl).await.unwrap(), None);
    // Renewing keeps the fence.
    assert_eq!(leases.acquire("alerts", "a", ttl).await.unwrap(), Some(1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(leases.acquire("alerts", "b", ttl).await.unwrap(), Some(2));
    assert_eq!(leases.acquire("alerts", "a", ttl).await.unwrap(), None);
    leases.release("alerts", "b").await.unwrap();
    assert_eq!(leases.acquire("alerts", "a", ttl).await.unwrap(), Some(3));
}

#[tokio::test]
async fn a_once_claim_is_won_by_exactly_one_of_many() {
    let Some(cluster) = cluster("once", "a").await else {
        return;
    };
    let claims = (0..10).map(|i| {
        let leases = cluster.leases().clone();
        tokio::spawn(async move {
            leases
                .claim_once("schedule:nightly", "1700000000000", &format!("n{i}"))
                .await
                .unwrap()
        })
    });
    let mut won = 0;
    for claim in claims {
        won += usize::from(claim.await.unwrap());
    }
    assert_eq!(won, 1);
    assert!(cluster
        .leases()
        .claim_once("schedule:nightly", "1700000060000", "n1")
        .await
        .unwrap());
}

#[tokio::test]
async fn nodes_starting_together_on_an_empty_cluster_agree_on_one_first_version() {
    let Some(first) = cluster("seed", "n1").await else {
        return;
    };
    let seeds = (0..4).map(|n| {
        let config = first.config().clone();
        tokio::spawn(async move {
            config
                .seed("[platform]\nname = \"shop\"\n", &format!("node n{n}"))
                .await
                .unwrap()
        })
    });
    let results = futures_util::future::join_all(seeds).await;
    let results: Vec<(i64, String, bool)> = results.into_iter().map(|r| r.unwrap()).collect();
    assert!(
        results.iter().all(|(version, _, _)| *version == 1),
        "{results:?}"
    );
    assert_eq!(results.iter().filter(|(_, _, seeded)| *seeded).count(), 1);
    // Once there is a version, a node with another local manifest gets the
    // cluster's.
    let (version, text, seeded) = first
        .config()
        .seed("[platform]\nname = \"other\"\n", "node n9")
        .await
        .unwrap();
    assert_eq!((version, seeded), (1, false));
    assert!(text.contains("shop"));
}
