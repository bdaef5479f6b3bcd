//! Sessions sitesync writes with, and the sizes of its multi-row statements: how every pool to
//! a site's server is set up (apply, control tables, verify, check).

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::Executor;

/// Session settings of every connection sitesync writes with: UTC so TIMESTAMP values travel
/// unchanged, strict so a value the column cannot hold is an error rather than silently cut,
/// but zero dates allowed since applications store them and they must arrive as they left.
pub const SESSION_SETUP: &str = "SET time_zone = '+00:00', \
     sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION', \
     NAMES utf8mb4 COLLATE utf8mb4_bin";

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 1_000;

/// Most rows in one multi-row statement.
pub const MAX_STATEMENT_ROWS: usize = 256;

/// Splits `n` rows into statement sizes that are powers of two, largest first, none above
/// `max` (nor [`MAX_STATEMENT_ROWS`]): each table and kind of statement then has at most nine
/// shapes, all of which stay prepared, instead of one per row count.
pub fn statement_sizes(n: usize, max: usize) -> impl Iterator<Item = usize> {
    let cap = max.clamp(1, MAX_STATEMENT_ROWS);
    let cap = 1usize << (usize::BITS - 1 - cap.leading_zeros());
    let mut left = n;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let size = cap.min(1usize << (usize::BITS - 1 - left.leading_zeros()));
        left -= size;
        Some(size)
    })
}

/// `items` cut into consecutive slices of [`statement_sizes`].
pub fn statement_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut start = 0;
    statement_sizes(items.len(), max).map(move |size| {
        let chunk = &items[start..start + size];
        start += size;
        chunk
    })
}

/// The connection options of `url`, with room for every statement shape apply uses (see
/// [`statement_sizes`]): evicting one makes sqlx send COM_STMT_CLOSE right before the next
/// statement, and that second small write waits for the server's delayed ACK under Nagle: 40 ms
/// per statement (measured, sysbench mix at 10,000 rows/s).
pub fn options(url: &str) -> Result<MySqlConnectOptions, super::dsn::DsnError> {
    Ok(super::dsn::Dsn::parse(url)?.sqlx()?.statement_cache_capacity(STATEMENT_CACHE))
}

/// A pool of at most `max` connections, each with [`SESSION_SETUP`].
pub async fn pool(options: MySqlConnectOptions, max: u32) -> Result<MySqlPool, sqlx::Error> {
    MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(SESSION_SETUP).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
}

#[cfg(test)]
mod tests {
    use super::{statement_chunks, statement_sizes};

    #[test]
    fn sizes_are_powers_of_two_largest_first_and_cover_every_row() {
        let sizes = |n, max| statement_sizes(n, max).collect::<Vec<_>>();
        assert!(sizes(0, 256).is_empty());
        assert_eq!(sizes(1, 256), [1]);
        assert_eq!(sizes(13, 256), [8, 4, 1]);
        assert_eq!(sizes(600, 256), [256, 256, 64, 16, 8]);
        assert_eq!(sizes(600, 100_000), [256, 256, 64, 16, 8]);
        assert_eq!(sizes(10, 3), [2, 2, 2, 2, 2]);
        for n in 0..1_100 {
            for max in [1, 3, 100, 256, 5_000] {
                let s = sizes(n, max);
                assert_eq!(s.iter().sum::<usize>(), n);
                assert!(s.iter().all(|x| x.is_power_of_two() && *x <= max.clamp(1, 256)), "{n} {max} {s:?}");
            }
        }
        let items: Vec<u32> = (0..13).collect();
        let chunks: Vec<&[u32]> = statement_chunks(&items, 256).collect();
        assert_eq!(chunks, [&items[0..8], &items[8..12], &items[12..13]]);
    }
}
