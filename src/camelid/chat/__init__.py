"""camelid.chat"""
