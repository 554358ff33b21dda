"""sqlite3: a million rows in one transaction, an index, and queries over it."""
import sqlite3

db = sqlite3.connect(":memory:")
db.execute("create table t (id integer primary key, name text, value real)")
with db:
    db.executemany("insert into t (name, value) values (?, ?)",
                   ((f"name-{i % 50000}-{i}", i * 0.5) for i in range(1_000_000)))
db.execute("create index t_name on t (name)")
(count,) = db.execute("select count(*) from t where name like 'name-42-%'").fetchone()
assert count == 20, count
(total,) = db.execute("select sum(value) from t").fetchone()
assert total == sum(i * 0.5 for i in range(1_000_000))
print("ok", count)
