// pgJDBC through pgmux with query_cache on: named server-side statements (prepareThreshold=1)
// read with parameters many times (served from the cache after the first few), then a write
// through the same driver to a row read before, and a read that must see it.
//
// Usage: java -cp /usr/share/java/postgresql.jar JdbcCache.java HOST PORT DBNAME USER TABLE
//
// TABLE(id int, name text) holds rows 1..20 named 'name <id>' (the test creates it). Prints
// "ok reads=N" and exits 0; on a wrong result prints it to stderr and exits 1.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.Properties;

public class JdbcCache {
  static String nameOf(PreparedStatement ps, int id) throws SQLException {
    ps.setInt(1, id);
    try (ResultSet rs = ps.executeQuery()) {
      if (!rs.next()) throw new AssertionError("no row for id " + id);
      String v = rs.getString(1);
      if (rs.next()) throw new AssertionError("more than one row for id " + id);
      return v;
    }
  }

  public static void main(String[] args) throws Exception {
    String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/" + args[2];
    Properties props = new Properties();
    props.setProperty("user", args[3]);
    props.setProperty("prepareThreshold", "1");
    String table = args[4];
    int reads = 0;
    try (Connection c = DriverManager.getConnection(url, props)) {
      try (PreparedStatement ps = c.prepareStatement("SELECT name FROM " + table + " WHERE id = ?")) {
        for (int i = 0; i < 40; i++) {
          int id = i % 4 == 3 ? 20 : 1 + i % 4;
          String got = nameOf(ps, id);
          reads++;
          if (!got.equals("name " + id)) throw new AssertionError("id " + id + ": got " + got);
        }
        try (PreparedStatement up = c.prepareStatement("UPDATE " + table + " SET name = ? WHERE id = ?")) {
          up.setString(1, "changed");
          up.setInt(2, 20);
          if (up.executeUpdate() != 1) throw new AssertionError("update count");
        }
        // A replica may not have replayed the UPDATE yet (as without the cache): read until it has.
        long deadline = System.currentTimeMillis() + 3000;
        String got;
        while (!(got = nameOf(ps, 20)).equals("changed")) {
          if (System.currentTimeMillis() > deadline) throw new AssertionError("id 20 still reads " + got + " after the update");
          Thread.sleep(20);
        }
        reads++;
      }
    } catch (Throwable e) {
      System.err.println(e);
      System.exit(1);
    }
    System.out.println("ok reads=" + reads);
  }
}
