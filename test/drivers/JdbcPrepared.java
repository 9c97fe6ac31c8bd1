// pgJDBC through pgmux: named server-side prepared statements in transaction mode.
//
// Usage: java -cp DIR:/usr/share/java/postgresql.jar JdbcPrepared HOST PORT DBNAME USER THREADS
//
// Expects the table driver_jdbc(worker int, k int, v text) to exist (the test creates it).
// prepareThreshold=1 makes the driver use named statements (S_1, S_2, ...) from the first
// execution. Each thread has its own Connection and runs PreparedStatements many times, with
// parameters, in autocommit, inside transactions (setAutoCommit(false)), in a rolled back
// transaction and as a batch, checking every result. Prints one summary line starting with
// "ok" and exits 0; on any failure prints the errors to stderr and exits 1.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.postgresql.PGStatement;

public class JdbcPrepared {
  static final int ITERATIONS = 200;
  static final AtomicInteger executed = new AtomicInteger();
  static final AtomicInteger serverPrepared = new AtomicInteger();

  static void check(boolean cond, String what) {
    if (!cond) throw new AssertionError(what);
  }

  static int queryInt(PreparedStatement ps) throws SQLException {
    executed.incrementAndGet();
    try (ResultSet rs = ps.executeQuery()) {
      check(rs.next(), "no row");
      int v = rs.getInt(1);
      check(!rs.next(), "more than one row");
      return v;
    }
  }

  static String queryString(PreparedStatement ps) throws SQLException {
    executed.incrementAndGet();
    try (ResultSet rs = ps.executeQuery()) {
      check(rs.next(), "no row");
      String v = rs.getString(1);
      check(!rs.next(), "more than one row");
      return v;
    }
  }

  static void insert(PreparedStatement ins, int worker, int k, String v) throws SQLException {
    ins.setInt(1, worker);
    ins.setInt(2, k);
    ins.setString(3, v);
    check(ins.executeUpdate() == 1, "insert count");
    executed.incrementAndGet();
  }

  static long[] countAndSum(PreparedStatement count, int worker) throws SQLException {
    count.setInt(1, worker);
    executed.incrementAndGet();
    try (ResultSet rs = count.executeQuery()) {
      check(rs.next(), "no count row");
      return new long[] {rs.getLong(1), rs.getLong(2)};
    }
  }

  static void worker(String url, int worker) throws Exception {
    try (Connection c = DriverManager.getConnection(url)) {
      PreparedStatement dbl = c.prepareStatement("SELECT ?::int * 2");
      PreparedStatement branch = c.prepareStatement("SELECT count(*)::int FROM pgbench_branches WHERE bid = ?");
      PreparedStatement concat = c.prepareStatement("SELECT ?::text || '-' || ?::int");
      PreparedStatement ins = c.prepareStatement("INSERT INTO driver_jdbc (worker, k, v) VALUES (?, ?, ?)");
      PreparedStatement count = c.prepareStatement("SELECT count(*), coalesce(sum(k), 0) FROM driver_jdbc WHERE worker = ?");

      // 1. Autocommit: each execution is its own transaction, on whichever backend is free.
      for (int i = 0; i < ITERATIONS; i++) {
        switch (i % 4) {
          case 0:
            dbl.setInt(1, worker * 1000 + i);
            check(queryInt(dbl) == (worker * 1000 + i) * 2, "double " + i);
            break;
          case 1:
            branch.setInt(1, 1 + (i / 4) % 2);
            // pgbench scale 1: bid 1 exists, bid 2 does not.
            check(queryInt(branch) == ((i / 4) % 2 == 0 ? 1 : 0), "branch " + i);
            break;
          case 2:
            concat.setString(1, "w" + worker);
            concat.setInt(2, i);
            check(queryString(concat).equals("w" + worker + "-" + i), "concat " + i);
            break;
          default:
            insert(ins, worker, i, "auto" + i);
        }
      }
      for (PreparedStatement ps : new PreparedStatement[] {dbl, branch, concat, ins}) {
        check(ps.unwrap(PGStatement.class).isUseServerPrepare(), "driver did not use a server-side prepared statement");
      }
      serverPrepared.addAndGet(4);
      long autoRows = ITERATIONS / 4;
      long autoSum = 0;
      for (int i = 3; i < ITERATIONS; i += 4) autoSum += i;
      long[] cs = countAndSum(count, worker);
      check(cs[0] == autoRows && cs[1] == autoSum, "count after autocommit inserts: " + cs[0] + "/" + cs[1]);

      // 2. Explicit transactions: statements prepared in earlier transactions, perhaps on
      //    another backend, are used inside them; a new statement is first prepared inside one.
      c.setAutoCommit(false);
      PreparedStatement inTx = c.prepareStatement("SELECT ?::int + 1");
      long txRows = 0, txSum = 0;
      for (int t = 0; t < 10; t++) {
        for (int i = 0; i < 5; i++) {
          dbl.setInt(1, t * 10 + i);
          check(queryInt(dbl) == (t * 10 + i) * 2, "tx double " + t + "/" + i);
          inTx.setInt(1, t * 10 + i);
          check(queryInt(inTx) == t * 10 + i + 1, "tx inTx " + t + "/" + i);
          insert(ins, worker, 10000 + t * 10 + i, "tx" + t);
          txRows++;
          txSum += 10000 + t * 10 + i;
        }
        // Inside the transaction, its own inserts are visible.
        cs = countAndSum(count, worker);
        check(cs[0] == autoRows + txRows, "count inside transaction " + t);
        c.commit();
      }
      // A rolled back transaction leaves nothing behind.
      insert(ins, worker, 99999, "rolled back");
      c.rollback();
      // An error inside a transaction: the transaction is aborted, rollback, go on.
      PreparedStatement div = c.prepareStatement("SELECT 1 / ?::int");
      div.setInt(1, 0);
      try {
        queryInt(div);
        throw new AssertionError("division by zero did not fail");
      } catch (SQLException e) {
        check("22012".equals(e.getSQLState()), "expected 22012, got " + e.getSQLState() + ": " + e.getMessage());
      }
      c.rollback();
      div.setInt(1, 4);
      check(queryInt(div) == 0, "div after rollback");
      c.commit();
      c.setAutoCommit(true);

      // 3. A batch: several Bind/Execute of one statement with one Sync.
      for (int i = 0; i < 20; i++) {
        ins.setInt(1, worker);
        ins.setInt(2, 20000 + i);
        ins.setString(3, "batch" + i);
        ins.addBatch();
      }
      int[] counts = ins.executeBatch();
      executed.addAndGet(counts.length);
      check(counts.length == 20, "batch length");
      for (int n : counts) check(n == 1, "batch row count " + n);
      long batchSum = 0;
      for (int i = 0; i < 20; i++) batchSum += 20000 + i;

      cs = countAndSum(count, worker);
      check(cs[0] == autoRows + txRows + 20, "final count " + cs[0]);
      check(cs[1] == autoSum + txSum + batchSum, "final sum " + cs[1]);

      // 4. Closing a statement closes its server statement (Close); preparing the same text
      //    again gets a new name and still works.
      dbl.close();
      PreparedStatement dbl2 = c.prepareStatement("SELECT ?::int * 2");
      for (int i = 0; i < 10; i++) {
        dbl2.setInt(1, i);
        check(queryInt(dbl2) == i * 2, "double again " + i);
      }
      check(dbl2.unwrap(PGStatement.class).isUseServerPrepare(), "re-prepared statement not server-side");
    }
  }

  public static void main(String[] args) throws Exception {
    String host = args[0], port = args[1], db = args[2], user = args[3];
    int threads = Integer.parseInt(args[4]);
    String url = "jdbc:postgresql://" + host + ":" + port + "/" + db + "?user=" + user
        + "&prepareThreshold=1&connectTimeout=10&socketTimeout=30&sslmode=disable";
    ExecutorService pool = Executors.newFixedThreadPool(threads);
    List<Future<?>> futures = new ArrayList<>();
    for (int w = 0; w < threads; w++) {
      final int worker = w;
      futures.add(pool.submit(() -> {
        worker(url, worker);
        return null;
      }));
    }
    pool.shutdown();
    int failed = 0;
    for (int w = 0; w < threads; w++) {
      try {
        futures.get(w).get(50, TimeUnit.SECONDS);
      } catch (Exception e) {
        failed++;
        Throwable cause = e.getCause() != null ? e.getCause() : e;
        System.err.println("worker " + w + " FAILED: " + cause);
        cause.printStackTrace();
      }
    }
    if (failed > 0) {
      System.err.println("FAILED: " + failed + " of " + threads + " workers");
      System.exit(1);
    }
    System.out.println("ok threads=" + threads + " executed=" + executed.get() + " serverPrepared=" + serverPrepared.get());
    System.exit(0);
  }
}
