-- The control plane's databases and their user (idempotent).
CREATE DATABASE IF NOT EXISTS keystone CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS glance CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS placement CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS nova_api CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS nova CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS nova_cell0 CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS neutron CHARACTER SET utf8mb4;
CREATE USER IF NOT EXISTS 'openstack'@'127.0.0.1' IDENTIFIED BY '${db_password}';
CREATE USER IF NOT EXISTS 'openstack'@'localhost' IDENTIFIED BY '${db_password}';
ALTER USER 'openstack'@'127.0.0.1' IDENTIFIED BY '${db_password}';
ALTER USER 'openstack'@'localhost' IDENTIFIED BY '${db_password}';
GRANT ALL PRIVILEGES ON keystone.* TO 'openstack'@'127.0.0.1', 'openstack'@'localhost';
GRANT ALL PRIVILEGES ON glance.* TO 'openstack'@'127.0.0.1', 'openstack'@'localhost';
GRANT ALL PRIVILEGES ON placement.* TO 'openstack'@'127.0.0.1', 'openstack'@'localhost';
GRANT ALL PRIVILEGES ON nova_api.* TO 'openstack'@'127.0.0.1', 'openstack'@'localhost';
GRANT ALL PRIVILEGES ON nova.* TO 'openstack'@'127.0.0.1', 'openstack'@'localhost';
GRANT ALL PRIVILEGES ON nova_cell0.* TO 'openstack'@'127.0.0.1', 'openstack'@'localhost';
GRANT ALL PRIVILEGES ON neutron.* TO 'openstack'@'127.0.0.1', 'openstack'@'localhost';
