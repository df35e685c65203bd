"""mDNS on the LAN: lanshare's adverts (``_lanshare._tcp`` and libostree's ``_ostree_repo._tcp``)
and the discovery of peers.

Modules: :mod:`~lanshare.discovery.txt` (both TXT formats), :mod:`~lanshare.discovery.siphash` and
:mod:`~lanshare.discovery.bloom` (libostree's collection-ref bloom filter),
:mod:`~lanshare.discovery.advertise` (registering the adverts; the daemon's shared AsyncZeroconf).
"""
