#!/bin/sh
# Runs once when the PostgreSQL volume is created: a capture role and sample tables.
set -eu
psql -v ON_ERROR_STOP=1 --username postgres --dbname shop <<SQL
CREATE ROLE cdc WITH LOGIN REPLICATION PASSWORD '${CDC_PASSWORD}';
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers(id),
                     total numeric(12,2) NOT NULL, status text NOT NULL DEFAULT 'new');
GRANT SELECT ON ALL TABLES IN SCHEMA public TO cdc;
GRANT CREATE ON DATABASE shop TO cdc;
ALTER TABLE customers OWNER TO cdc;
ALTER TABLE orders OWNER TO cdc;
SQL
