"""Tools that measure and stress posfed: the latency and chain benchmarks, the chaos harness,
and the real parts they drive (a TCP fault proxy, throwaway PostgreSQL clusters, the tills'
SMB and SFTP servers). They import the product; the product never imports them
(import-linter). ``posfed bench`` and ``posfed chaos`` reach them through entry points."""
