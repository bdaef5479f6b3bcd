-- sysbench script: a LIMS-like application writing new people (tests/fixtures/lims.sql `user`).
-- Each event is one transaction of --rows rows (one multi-row INSERT, autocommit). `mtime`
-- carries the commit-side time in microseconds since the epoch (NOW(6) of the statement): the
-- benchmark's trigger at the target compares it with the time the applied row arrives there.
-- `creator_id` = 1 points at the seeded `admin` user, so every row exercises sitesync's
-- reference translation (capture resolves it to the natural key, apply to the local id).
--
--   sysbench deploy/bench/lims_writer.lua --mysql-host=127.0.0.1 --mysql-port=3307 \
--     --mysql-user=root --mysql-db=DB --prefix=run1 --rows=10 --rate=200 --time=15 run

sysbench.cmdline.options = {
   prefix = {"token prefix (unique per run)", "bench"},
   rows = {"rows per transaction", 1},
}

function thread_init()
   drv = sysbench.sql.driver()
   con = drv:connect()
   n = 0
end

function event()
   local rows = tonumber(sysbench.opt.rows)
   local vals = {}
   for i = 1, rows do
      n = n + 1
      local tok = string.format("%s-%d-%d", sysbench.opt.prefix, sysbench.tid, n)
      vals[i] = string.format(
         "('%s','Bench User %s','%s@lab.example.edu',0,0,1,NULL,CAST(UNIX_TIMESTAMP(NOW(6))*1000000 AS SIGNED))",
         tok, tok, tok)
   end
   con:query("INSERT INTO `user` (token,name,email,is_temporary,atime,creator_id,approver_id,mtime) VALUES "
                .. table.concat(vals, ","))
end

function thread_done()
   con:disconnect()
end
