"""Private internals shared by every package: argument checks, precision helpers, device meshes and
multi-process set-up, the one compile cache (:func:`jetjax.clear_caches`) and the user cache directory."""
