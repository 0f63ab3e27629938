-- The data model of benches/pipeline.rs and tests/it/perf_smoke.rs over the table of
-- pipeline_table.sql: two identities, three reserved attributes, ten plain attributes.
SELECT customer_id, email, first_name AS "$firstname", last_name AS "$lastname",
       age AS "$age", id AS account_id, visits, balance, ltv, churn_risk, vip, opted_in,
       tags, updated_at, signup_date
FROM {table}
