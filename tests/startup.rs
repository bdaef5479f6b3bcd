//! `sitesync run` started while its Kafka or its database is down waits for them, not ready,
//! saying what it waits for, and replicates once they are back (issue 16, part 6).

mod common;

use std::time::Duration;

use common::kafka_node::KafkaNode;
use common::scratch::Scratch;
use common::{Federation, Spec};

const CONFIG: &str = "[entities.person]\ntable = \"person\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"person\"]\n";
const SCHEMA: &str = "CREATE TABLE person (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL) ENGINE=InnoDB";
const BINLOG: &[&str] =
    &["--log-bin=mysql-bin", "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL", "--server-id=77"];

async fn wait_person(fed: &mut Federation, site: &str, expected: &str) {
    let pool = fed.pool(site).clone();
    let expected = expected.to_string();
    fed.wait_for(Duration::from_secs(90), &format!("{expected} at {site}"), || {
        let (pool, expected) = (pool.clone(), expected.clone());
        async move { common::rows(&pool, "SELECT name FROM person ORDER BY id").await.iter().any(|r| r[0] == expected) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_started_while_kafka_is_down_waits_not_ready_and_replicates_once_it_is_back() {
    let kafka = KafkaNode::start("startup");
    let mut fed = Federation::new(
        "kafkadown",
        Spec { schema: SCHEMA, entities_and_routes: CONFIG, kafka: Some(kafka.bootstrap()), ..Spec::default() },
    )
    .await;
    let listen = fed.listen("b");
    kafka.freeze();
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    // Long past the 20 s after which it used to exit with status 2.
    tokio::time::sleep(Duration::from_secs(25)).await;
    fed.assert_running();
    let ready = common::http_get(listen, "/readyz").unwrap_or_default();
    assert!(ready.contains("not ready"), "b must not be ready without Kafka: {ready}");
    assert!(fed.logs_contain("waiting for Kafka at"), "the log says what it waits for");

    kafka.thaw();
    fed.exec("a", "INSERT INTO person VALUES (1, 'after the outage')").await;
    wait_person(&mut fed, "b", "after the outage").await;
    fed.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_started_while_its_database_is_down_waits_and_replicates_once_it_is_back() {
    let mut server = Scratch::new("startup-db", BINLOG);
    let mut fed = Federation::new(
        "dbdown",
        Spec { schema: SCHEMA, entities_and_routes: CONFIG, servers: &[None, Some(server.url())], ..Spec::default() },
    )
    .await;
    let listen = fed.listen("b");
    fed.start("a", &["run"]);
    server.stop();
    fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_secs(12)).await;
    fed.assert_running();
    let ready = common::http_get(listen, "/readyz").unwrap_or_default();
    assert!(ready.contains("not ready"), "b must not be ready without its database: {ready}");
    assert!(fed.logs_contain("waiting for the database"), "the log says what it waits for");

    fed.exec("a", "INSERT INTO person VALUES (1, 'written while b was down')").await;
    server.restart();
    wait_person(&mut fed, "b", "written while b was down").await;
    fed.assert_running();
}
