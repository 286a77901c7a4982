raise RuntimeError("cannot even import")
