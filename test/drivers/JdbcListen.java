// pgJDBC through pgmux: LISTEN, then PGConnection.getNotifications(timeoutMs).
//
// Usage: java -cp DIR:/usr/share/java/postgresql.jar JdbcListen HOST PORT DBNAME USER CHANNEL COUNT QUERYMODE TIMEOUT_MS
//
// QUERYMODE is pgJDBC's preferQueryMode: "extended" (the default: Statement.execute sends
// Parse/Bind/Describe/Execute/Sync) or "simple" (a simple Query). prepareThreshold stays at
// its default. After LISTEN it prints "listening", then "notify CHANNEL PAYLOAD" per
// notification as it arrives; after COUNT notifications "ok" and exit 0. Not all within
// TIMEOUT_MS: "timeout" on stderr and exit 2; any other failure exit 1.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.Statement;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;

public class JdbcListen {
  public static void main(String[] args) {
    try {
      System.exit(run(args));
    } catch (Throwable t) {
      t.printStackTrace();
      System.err.println("FAILED: " + t);
      System.exit(1);
    }
  }

  static int run(String[] args) throws Exception {
    String host = args[0], port = args[1], db = args[2], user = args[3], channel = args[4];
    int count = Integer.parseInt(args[5]);
    String queryMode = args[6];
    long timeoutMs = Long.parseLong(args[7]);
    String url = "jdbc:postgresql://" + host + ":" + port + "/" + db + "?user=" + user
        + "&preferQueryMode=" + queryMode + "&connectTimeout=10&socketTimeout=60&sslmode=disable";
    try (Connection c = DriverManager.getConnection(url)) {
      PGConnection pg = c.unwrap(PGConnection.class);
      try (Statement st = c.createStatement()) {
        st.execute("LISTEN \"" + channel.replace("\"", "\"\"") + "\"");
        try (ResultSet rs = st.executeQuery("SELECT 41 + 1")) {
          if (!rs.next() || rs.getInt(1) != 42) throw new AssertionError("SELECT 41 + 1");
        }
      }
      System.out.println("listening");
      System.out.flush();
      long deadline = System.currentTimeMillis() + timeoutMs;
      int got = 0;
      while (got < count) {
        long left = deadline - System.currentTimeMillis();
        if (left <= 0) {
          System.err.println("timeout: " + got + " of " + count + " notifications in " + timeoutMs + " ms");
          return 2;
        }
        PGNotification[] ns = pg.getNotifications((int) Math.min(left, 500));
        if (ns == null) continue;
        for (PGNotification n : ns) {
          System.out.println("notify " + n.getName() + " " + n.getParameter());
          got++;
        }
        System.out.flush();
      }
    }
    System.out.println("ok");
    return 0;
  }
}
