-- Demo data model: one row per customer. Column aliases decide where values go:
-- customer_id and email are identities, "$firstname" is mParticle's reserved
-- first-name attribute, updated_at drives incremental windows and is not sent.
SELECT
    c.id          AS customer_id,
    c.email       AS email,
    c.first_name  AS "$firstname",
    c.last_name   AS "$lastname",
    c.plan        AS plan_tier,
    c.ltv         AS lifetime_value,
    c.churn_score AS churn_score,
    c.marketing_opt_in AS marketing_opt_in,
    c.signup_date AS signup_date,
    c.updated_at  AS updated_at
FROM customers AS c
