//! References to rows capture never saw (history from before sitesync): their natural keys are
//! read from the origin's table and must come out encoded exactly as capture encodes binlog
//! values, whatever the key's type, or no other site can find the row.

mod common;

use std::time::Duration;

use common::{Federation, Spec};

const SCHEMA: &str = "
CREATE TABLE device (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, serial BINARY(4) NOT NULL, UNIQUE KEY (serial)) ENGINE=InnoDB;
CREATE TABLE shift (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, starts TIMESTAMP(3) NOT NULL, UNIQUE KEY (starts)) ENGINE=InnoDB;
CREATE TABLE badge (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, uid UUID NOT NULL, UNIQUE KEY (uid)) ENGINE=InnoDB;
CREATE TABLE room (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, no INT NOT NULL, UNIQUE KEY (no)) ENGINE=InnoDB;
CREATE TABLE reading (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  ref_no VARCHAR(20) NOT NULL,
  device_id INT NULL, shift_id INT NULL, badge_id INT NULL, room_id INT NULL,
  UNIQUE KEY (ref_no)
) ENGINE=InnoDB
";

const CONFIG: &str = r#"
[entities.device]
table = "device"
key = ["serial"]

[entities.shift]
table = "shift"
key = ["starts"]

[entities.badge]
table = "badge"
key = ["uid"]

[entities.room]
table = "room"
key = ["no"]

[entities.reading]
table = "reading"
key = ["ref_no"]
refs = { device_id = "device", shift_id = "shift", badge_id = "badge", room_id = "room" }

[[routes]]
from = ["a"]
to = ["b"]
entities = ["device", "shift", "badge", "room", "reading"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_to_history_find_their_rows_whatever_the_key_type() {
    let mut fed = Federation::new(
        "histrefs",
        Spec {
            schema: SCHEMA,
            entities_and_routes: CONFIG,
            // The same rows at both sites under different ids; A's session writes the shift in
            // +09:00, B's in UTC: the same instant.
            seed: |i, _| {
                let (offset, zone, local) =
                    if i == 0 { (100, "+09:00", "2024-03-01 17:00:00.125") } else { (500, "+00:00", "2024-03-01 08:00:00.125") };
                format!(
                    "SET time_zone = '{zone}';
                     ALTER TABLE device AUTO_INCREMENT = {offset}; ALTER TABLE shift AUTO_INCREMENT = {offset};
                     ALTER TABLE badge AUTO_INCREMENT = {offset}; ALTER TABLE room AUTO_INCREMENT = {offset};
                     INSERT INTO device (serial) VALUES (x'00FF1000');
                     INSERT INTO shift (starts) VALUES ('{local}');
                     INSERT INTO badge (uid) VALUES ('6ccd780c-baba-1026-9564-5b8c656024db');
                     INSERT INTO room (no) VALUES (42)"
                )
            },
            ..Spec::default()
        },
    )
    .await;
    fed.start("a", &["capture"]);
    fed.start("b", &["apply"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    fed.exec("a", "INSERT INTO reading (ref_no, device_id, shift_id, badge_id, room_id) SELECT 'r1', d.id, s.id, b.id, r.id FROM device d, shift s, badge b, room r").await;

    let q = "SELECT r.ref_no, HEX(d.serial), CAST(CONVERT_TZ(s.starts, @@session.time_zone, '+00:00') AS CHAR), CAST(b.uid AS CHAR), m.no
             FROM reading r JOIN device d ON d.id = r.device_id JOIN shift s ON s.id = r.shift_id
             JOIN badge b ON b.id = r.badge_id JOIN room m ON m.id = r.room_id";
    let pb = fed.pool("b").clone();
    fed.wait_for(Duration::from_secs(60), "the reading at B, pointing at B's own rows", || {
        let pb = pb.clone();
        async move { common::rows(&pb, q).await.len() == 1 }
    })
    .await;
    assert_eq!(fed.rows("b", q).await, [["r1", "00FF1000", "2024-03-01 08:00:00.125", "6ccd780c-baba-1026-9564-5b8c656024db", "42"]]);
    // B's own ids, not A's.
    assert_eq!(fed.rows("b", "SELECT device_id, shift_id, badge_id, room_id FROM reading").await, [["500", "500", "500", "500"]]);
}
