"""The QGIS desktop plugin: the plugin object with its menu and toolbar actions (`plugin`), the
Segment roads dialog (`dialog`, its generated editors in `option_editors`, what it returns in
`params`), the task that runs it (`task`) and the package installer (`installer_dialog`).
"""
