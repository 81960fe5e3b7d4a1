"""Audits: the library entry point, journal, identity, statistics, verdict, distributed
runs, the map.
"""
