-- The benchmark table of benches/pipeline.rs (also used by tests/it/perf_smoke.rs):
-- 15 columns of the kinds a customer model has. `{table}` and `{rows}` are replaced.
CREATE TABLE {table} AS SELECT
    g::int8 AS id,
    'c' || lpad(g::text, 9, '0') AS customer_id,
    'user' || g || '@example.com' AS email,
    (ARRAY['Ada','Grace','Linus','Zoë','Margaret','Alan'])[1 + g % 6] AS first_name,
    'Family' || (g % 997) AS last_name,
    (18 + g % 70)::int4 AS age,
    (g * 7 % 100000)::int8 AS visits,
    round((g * 0.37)::numeric % 100000, 2)::numeric(14,2) AS balance,
    (g * 1.37)::float8 AS ltv,
    ((g % 1000) / 1000.0)::float8 AS churn_risk,
    (g % 2 = 0) AS vip,
    (g % 3 <> 0) AS opted_in,
    ARRAY['tag' || (g % 7), 'tag' || (g % 11)] AS tags,
    TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 second' AS updated_at,
    DATE '2020-01-01' + (g % 1500)::int AS signup_date
FROM generate_series(1, {rows}) AS g;
ANALYZE {table};
