//! Tables of every shape a MySQL user can create (issue 16): what the origin stored, the target
//! stores; what the target truly cannot hold becomes a dead letter naming the column.

mod common;

use std::time::Duration;

use common::{Federation, Spec};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_value_the_origin_stored_outside_strict_mode_is_stored_and_a_narrower_column_is_a_dead_letter() {
    let mut fed = Federation::new(
        "generated",
        Spec {
            sites: &["a", "b"],
            schema: "CREATE TABLE t (id INT PRIMARY KEY, i INT NOT NULL, gen INT AS (i + 1) VIRTUAL, note VARCHAR(10) NOT NULL DEFAULT '') ENGINE=InnoDB",
            entities_and_routes: "[entities.t]\ntable = \"t\"\n\n[[routes]]\nfrom = [\"a\"]\nto = [\"b\"]\nentities = [\"t\"]\n",
            // b's note is narrower than a's: a value that fits at a does not fit at b.
            seed: |_, site| if site == "b" { "ALTER TABLE t MODIFY note VARCHAR(3) NOT NULL DEFAULT ''".into() } else { String::new() },
            ..Spec::default()
        },
    )
    .await;
    fed.start("a", &["run"]);
    fed.start("b", &["run"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The application's session runs without strict mode: gen overflows, and a stores the row.
    fed.exec("a", "SET SESSION sql_mode = ''; INSERT INTO t (id, i) VALUES (1, 2147483647); UPDATE t SET i = 2147483647, note = 'x' WHERE id = 1; INSERT INTO t (id, i) VALUES (2, 5)").await;
    let pool = fed.pool("b").clone();
    fed.wait_for(WAIT, "both rows at b", || {
        let pool = pool.clone();
        async move { common::rows(&pool, "SELECT id, i, note FROM t ORDER BY id").await == vec![vec!["1", "2147483647", "x"], vec!["2", "5", ""]] }
    })
    .await;

    // A value that b's own column cannot hold is caught, and the dead letter names the column.
    fed.exec("a", "INSERT INTO t (id, i, note) VALUES (3, 1, 'too long')").await;
    let ctl = fed.control_db.clone();
    let sql = format!("SELECT reason FROM `{ctl}`.dead_letters");
    fed.wait_for(WAIT, "a dead letter for note", || {
        let (pool, sql) = (pool.clone(), sql.clone());
        async move { common::rows(&pool, &sql).await.iter().any(|r| r[0].contains("'note'")) }
    })
    .await;
    assert_eq!(fed.scalar("b", "SELECT COUNT(*) FROM t WHERE id = 3").await, 0);
}
