# Sourced (not executed) by the MySQL image's entrypoint on a new data volume, after 01-lims.sql.
# Creates sitesync's least-privilege user (password: SITESYNC_PASSWORD, the same value as the
# SITESYNC_<SITE>_PASSWORD that sitesync's containers get) and a little history that differs per
# campus (LIMS_CAMPUS), so that `sitesync snapshot` has rows to link and rows to create.
# Sourced by the entrypoint's shell: no `exit` here. The demo passwords must not contain `'`.

MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mysql --protocol=socket --socket="${SOCKET:-/var/run/mysqld/mysqld.sock}" -uroot --default-character-set=utf8mb4 lims <<SQL
-- Least privilege (deploy/runbook/README.md, section 3): read the binlog, read and write the
-- LIMS tables, own the control database. mysql_native_password: sitesync's control-table client
-- cannot complete MySQL 8's default caching_sha2_password login without TLS (section 3).
CREATE USER 'sitesync'@'%' IDENTIFIED WITH mysql_native_password BY '${SITESYNC_PASSWORD}';
GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'sitesync'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON lims.* TO 'sitesync'@'%';
GRANT ALL ON sitesync.* TO 'sitesync'@'%';
SQL

case "$LIMS_CAMPUS" in
campus_a)
    MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mysql --protocol=socket --socket="${SOCKET:-/var/run/mysqld/mysqld.sock}" -uroot --default-character-set=utf8mb4 lims <<'SQL'
-- The same administrator and organisation tree as campus B, under other ids.
INSERT INTO user (token, name, mtime) VALUES ('admin', 'Administrator', 1);
INSERT INTO user (token, name, mtime) VALUES ('a-staff-1', 'A 校区 职员 1', 1);
INSERT INTO tag (uuid, name) VALUES ('00000000-0000-0000-0000-000000000001', '示例大学');
INSERT INTO tag (uuid, name, parent_id)
    SELECT '00000000-0000-0000-0000-000000000002', '化学系', id FROM tag WHERE uuid = '00000000-0000-0000-0000-000000000001';
INSERT INTO lab (code, name, pi_id, mtime) SELECT 'LAB-A1', 'A 校区 课题组 1', id, 1 FROM user WHERE token = 'a-staff-1';
INSERT INTO equipment (ref_no, name) VALUES ('A-EQ-1', 'A 校区 核磁共振仪');
SQL
    ;;
campus_b)
    MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mysql --protocol=socket --socket="${SOCKET:-/var/run/mysqld/mysqld.sock}" -uroot --default-character-set=utf8mb4 lims <<'SQL'
INSERT INTO user (token, name, mtime) VALUES ('b-staff-1', 'B 校区 职员 1', 1), ('b-staff-2', 'B 校区 职员 2', 1);
INSERT INTO user (token, name, mtime) VALUES ('admin', 'Administrator', 1);
INSERT INTO tag (uuid, name) VALUES ('00000000-0000-0000-0000-000000000003', 'B 校区');
INSERT INTO tag (uuid, name) VALUES ('00000000-0000-0000-0000-000000000001', '示例大学');
INSERT INTO tag (uuid, name, parent_id)
    SELECT '00000000-0000-0000-0000-000000000002', '化学系', id FROM tag WHERE uuid = '00000000-0000-0000-0000-000000000001';
INSERT INTO lab (code, name, pi_id, mtime) SELECT 'LAB-B1', 'B 校区 课题组 1', id, 1 FROM user WHERE token = 'b-staff-2';
INSERT INTO equipment (ref_no, name, group_id)
    SELECT 'B-EQ-1', 'B 校区 电子显微镜', id FROM tag WHERE uuid = '00000000-0000-0000-0000-000000000002';
SQL
    ;;
esac
