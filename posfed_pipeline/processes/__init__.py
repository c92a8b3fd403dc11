"""The store server's processes: the services ``posfed demo`` runs (``services``), the small
service manager it runs them under (``supervisor``), the pid lock that keeps one fast path or
supervisor per home (``pid_lock``), and children that stop with their parent
(``process_ties``). Production runs the same services as systemd units (deploy/systemd/)."""
