-- Demo warehouse for the quickstart: created on first use by wsync (seed_sql in wsync.toml).
CREATE TABLE customers (
    id               TEXT PRIMARY KEY,
    email            TEXT,
    first_name       TEXT,
    last_name        TEXT,
    plan             TEXT,
    ltv              DECIMAL(12, 2),
    churn_score      REAL,
    marketing_opt_in BOOLEAN,
    signup_date      DATE,
    updated_at       DATETIME NOT NULL
);

INSERT INTO customers VALUES
    ('c-1001', 'ada@example.com',    'Ada',    'Lovelace', 'enterprise', '1342.50', 0.02, 1, '2021-03-14', '2026-01-02 09:00:00'),
    ('c-1002', 'grace@example.com',  'Grace',  'Hopper',   'pro',        '310.00',  0.11, 1, '2022-07-01', '2026-01-03 10:30:00'),
    ('c-1003', 'alan@example.com',   'Alan',   'Turing',   'free',       '0.00',    0.64, 0, '2023-01-20', '2026-01-04 08:15:00'),
    ('c-1004', NULL,                 'Edsger', 'Dijkstra', 'pro',        '289.99',  0.20, 1, '2023-05-05', '2026-01-05 12:00:00'),
    ('c-1005', 'barbara@example.com','Barbara','Liskov',   'enterprise', '2210.00', 0.05, NULL, '2020-11-11', '2026-01-06 17:45:00'),
    ('c-1006', 'ken@example.com',    'Ken',    'Thompson', 'pro',        '120.10',  0.33, 1, '2024-02-29', '2026-01-07 07:07:07'),
    ('c-1007', 'margaret@example.com','Margaret','Hamilton','enterprise','5120.75', 0.01, 1, '2019-06-30', '2026-01-08 23:59:59'),
    (NULL,     NULL,                 'Anonymous', NULL,    'free',       '0.00',    0.90, 0, '2025-12-31', '2026-01-09 06:00:00');
