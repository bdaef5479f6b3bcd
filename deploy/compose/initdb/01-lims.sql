-- The LIMS schema of the demo (a copy of tests/fixtures/lims.sql): run by the MySQL image's
-- entrypoint in the database MYSQL_DATABASE (lims) when the data volume is new.
CREATE TABLE `user` (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  token VARCHAR(64) NOT NULL,
  name VARCHAR(100) NOT NULL,
  email VARCHAR(200) NULL,
  avatar MEDIUMBLOB NULL,
  is_temporary TINYINT NOT NULL DEFAULT 0,
  atime INT NOT NULL DEFAULT 0,
  creator_id INT NULL,
  approver_id INT NULL,
  mtime BIGINT NOT NULL DEFAULT 0,
  UNIQUE KEY token (token)
) ENGINE=InnoDB;
CREATE TABLE user_password (
  token VARCHAR(64) NOT NULL PRIMARY KEY,
  password_hash VARCHAR(255) NOT NULL
) ENGINE=InnoDB;
CREATE TABLE lab (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  code VARCHAR(64) NOT NULL,
  name VARCHAR(100) NOT NULL,
  pi_id INT NULL,
  is_temporary TINYINT NOT NULL DEFAULT 0,
  atime INT NOT NULL DEFAULT 0,
  mtime BIGINT NOT NULL DEFAULT 0,
  UNIQUE KEY code (code)
) ENGINE=InnoDB;
CREATE TABLE tag (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  uuid CHAR(36) NOT NULL,
  name VARCHAR(100) NOT NULL,
  parent_id INT NULL,
  UNIQUE KEY uuid (uuid)
) ENGINE=InnoDB;
CREATE TABLE user_lab (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user_id INT NOT NULL,
  lab_id INT NOT NULL,
  type VARCHAR(20) NOT NULL DEFAULT 'member',
  UNIQUE KEY pair (user_id, lab_id, type)
) ENGINE=InnoDB;
CREATE TABLE user_tag (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user_id INT NOT NULL,
  tag_id INT NOT NULL,
  UNIQUE KEY pair (user_id, tag_id)
) ENGINE=InnoDB;
CREATE TABLE equipment (
  id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  ref_no VARCHAR(64) NOT NULL,
  name VARCHAR(100) NOT NULL,
  group_id INT NULL,
  source_site VARCHAR(64) NULL,
  mtime BIGINT NOT NULL DEFAULT 0,
  UNIQUE KEY ref_no (ref_no)
) ENGINE=InnoDB
;
