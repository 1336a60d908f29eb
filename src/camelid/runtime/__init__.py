"""camelid.runtime"""
