"""Offline batch jobs on Ray Data: embed or classify whole image collections from an artifact."""
