"""Detector building blocks: backbones, necks, heads, name mapping and complexity counting."""
